import AVFoundation
import CoreML
import Observation
import PhotosUI
import SwiftUI
import UIKit

/// Everything the screen shows. It lives on the main actor and only ever changes there.
///
/// The work happens elsewhere: `CameraController` captures on its own queues, `Classifier` runs
/// Vision on a serial background queue, and `ModelStore` (an actor) loads and compiles models.
/// Their results come back here with `Task { @MainActor in ... }`.
@MainActor
@Observable
final class AppModel {
    enum Source: Equatable {
        case camera
        case photo
    }

    enum CameraStatus: Equatable {
        case starting
        case running
        case paused(String)
        case denied
        case restricted
        case unavailable(String)
    }

    enum ModelStatus: Equatable {
        case loading(String)
        case ready(ModelInfo)
        case failed(String)
    }

    private(set) var source: Source
    private(set) var cameraStatus: CameraStatus = .starting
    private(set) var modelStatus: ModelStatus = .loading(ModelStore.bundledModelName)
    private(set) var predictions: [Prediction] = []
    /// Vision's time for one image, smoothed for the camera.
    private(set) var latencyMs: Double?
    /// Classified camera frames per second, smoothed.
    private(set) var framesPerSecond: Double?
    private(set) var inferenceError: String?
    private(set) var photo: UIImage?
    private(set) var isImporting = false
    private(set) var usesImportedModel = false
    private(set) var alertMessage = ""
    var isAlertPresented = false
    /// Bound to the picker; `computeUnitsChanged()` reloads the model.
    var computeUnits: ComputeUnitsOption

    /// False on the Simulator, which has no camera: photos are the only source there.
    let hasCamera: Bool
    /// False on the Simulator, where the model always runs on the CPU.
    let computeUnitsSelectable: Bool

    let camera = CameraController()
    private let classifier = Classifier()
    private let store = ModelStore()

    @ObservationIgnored private var modelSource: ModelStore.Source = .bundled
    @ObservationIgnored private var activeModelID: UUID?
    @ObservationIgnored private var loadGeneration = 0
    @ObservationIgnored private var lastFrameResultTime: CFTimeInterval?
    @ObservationIgnored private var hasStarted = false
    @ObservationIgnored private var isStartingCamera = false

    init() {
        #if targetEnvironment(simulator)
        hasCamera = false
        computeUnitsSelectable = false
        computeUnits = .cpuOnly
        source = .photo
        #else
        hasCamera = true
        computeUnitsSelectable = true
        computeUnits = .all
        source = .camera
        #endif

        camera.setEventHandler { [weak self] event in
            guard let self else { return }
            Task { @MainActor in self.handle(event) }
        }
        let classifier = self.classifier
        camera.setFrameHandler { [weak self] pixelBuffer, orientation in
            guard let self else { return }
            classifier.classifyFrame(pixelBuffer, orientation: orientation) { result in
                Task { @MainActor in self.handleFrameResult(result) }
            }
        }
    }

    /// The message shown over the preview while the session is interrupted.
    var pausedReason: String? {
        if case .paused(let reason) = cameraStatus {
            return reason
        }
        return nil
    }

    // MARK: - Lifecycle

    /// Called once, by the root view's `.task`.
    func start() async {
        guard !hasStarted else { return }
        hasStarted = true
        if hasCamera {
            Task { await startCamera() }
        }
        await loadModel()
    }

    /// Capture stops in the background and resumes when the app is active again.
    func scenePhaseChanged(_ phase: ScenePhase) {
        switch phase {
        case .active:
            guard hasStarted, source == .camera else { return }
            Task { await startCamera() }
        case .background:
            camera.stop()
            lastFrameResultTime = nil
        case .inactive:
            break
        @unknown default:
            break
        }
    }

    // MARK: - Camera

    private func startCamera() async {
        guard hasCamera, !isStartingCamera else { return }
        isStartingCamera = true
        defer { isStartingCamera = false }

        switch AVCaptureDevice.authorizationStatus(for: .video) {
        case .authorized:
            break
        case .notDetermined:
            cameraStatus = .starting
            guard await AVCaptureDevice.requestAccess(for: .video) else {
                cameraStatus = .denied
                return
            }
        case .denied:
            cameraStatus = .denied
            return
        case .restricted:
            cameraStatus = .restricted
            return
        @unknown default:
            cameraStatus = .denied
            return
        }

        if cameraStatus == .denied || cameraStatus == .restricted {
            // Access was granted in Settings while the app was in the background.
            cameraStatus = .starting
        }
        do {
            try await camera.configure()
        } catch {
            cameraStatus = .unavailable(error.localizedDescription)
            return
        }
        camera.trackRotation()
        // The user may have picked a photo while the session was being built.
        guard source == .camera else { return }
        camera.start()
    }

    /// Back from a photo to the live camera.
    func useCamera() {
        guard hasCamera else { return }
        source = .camera
        photo = nil
        resetResults()
        Task { await startCamera() }
    }

    private func handle(_ event: CameraController.Event) {
        switch event {
        case .started:
            cameraStatus = .running
        case .interrupted(let reason):
            cameraStatus = .paused(reason)
        case .interruptionEnded:
            cameraStatus = .running
        case .failed(let message):
            cameraStatus = .unavailable(message)
        }
    }

    private func handleFrameResult(_ result: Result<Classification, Error>) {
        guard source == .camera else { return }
        switch result {
        case .success(let classification):
            // A frame that was in flight while the model changed belongs to the old model.
            guard classification.modelID == activeModelID else { return }
            predictions = classification.predictions
            latencyMs = Self.smoothed(latencyMs, classification.latencyMs)
            inferenceError = nil
            let now = CACurrentMediaTime()
            if let last = lastFrameResultTime, now > last {
                framesPerSecond = Self.smoothed(framesPerSecond, 1 / (now - last))
            }
            lastFrameResultTime = now
        case .failure(let error):
            inferenceError = error.localizedDescription
        }
    }

    /// An exponential moving average: readable numbers at 30 updates a second.
    private static func smoothed(_ old: Double?, _ new: Double) -> Double {
        guard let old else { return new }
        return old * 0.8 + new * 0.2
    }

    private func resetResults() {
        predictions = []
        latencyMs = nil
        framesPerSecond = nil
        inferenceError = nil
        lastFrameResultTime = nil
    }

    // MARK: - Photos

    /// Loads a photo picked with `PhotosPicker` and classifies it.
    func classifyPhoto(from item: PhotosPickerItem) async {
        do {
            guard let data = try await item.loadTransferable(type: Data.self),
                  let image = UIImage(data: data)
            else {
                presentAlert("The selected item could not be read as an image.")
                return
            }
            await classify(photo: image)
        } catch {
            presentAlert("Could not load the photo: \(error.localizedDescription)")
        }
    }

    private func classify(photo image: UIImage) async {
        source = .photo
        photo = image
        camera.stop()
        resetResults()
        guard let cgImage = image.cgImage else {
            presentAlert("This image has no bitmap to classify.")
            return
        }
        let orientation = CGImagePropertyOrientation(image.imageOrientation)
        do {
            let classification = try await classifier.classify(cgImage, orientation: orientation)
            // Another photo, the camera or another model may have taken over meanwhile.
            guard source == .photo, photo === image, classification.modelID == activeModelID else {
                return
            }
            predictions = classification.predictions
            latencyMs = classification.latencyMs
        } catch {
            inferenceError = error.localizedDescription
        }
    }

    // MARK: - Models

    /// The picker changed: Core ML fixes compute units at load time, so load again.
    func computeUnitsChanged() {
        Task { await loadModel() }
    }

    /// Back from an imported model to the one in the app bundle.
    func useBundledModel() {
        modelSource = .bundled
        usesImportedModel = false
        Task { await loadModel() }
    }

    /// Compiles (or takes from the cache) and loads a model picked in Files. The current model
    /// stays in use until the new one has loaded, and stays if it cannot be used.
    func importModel(from url: URL) async {
        isImporting = true
        defer { isImporting = false }
        do {
            let source = try await store.compiledSource(forImportedModelAt: url)
            let loaded = try await store.load(source, computeUnits: computeUnits.mlComputeUnits)
            loadGeneration += 1
            modelSource = source
            usesImportedModel = true
            install(loaded)
        } catch {
            presentAlert("\(url.lastPathComponent) cannot be used: \(error.localizedDescription)")
        }
    }

    private func loadModel() async {
        loadGeneration += 1
        let generation = loadGeneration
        let source = modelSource
        modelStatus = .loading(source.displayName)
        do {
            let loaded = try await store.load(source, computeUnits: computeUnits.mlComputeUnits)
            // A newer load (another compute-unit choice, an import) has won meanwhile.
            guard generation == loadGeneration else { return }
            install(loaded)
        } catch {
            guard generation == loadGeneration else { return }
            classifier.use(nil)
            activeModelID = nil
            resetResults()
            modelStatus = .failed(error.localizedDescription)
        }
    }

    private func install(_ loaded: LoadedModel) {
        classifier.use(loaded)
        activeModelID = loaded.id
        modelStatus = .ready(loaded.info)
        resetResults()
        if source == .photo, let photo {
            Task { await classify(photo: photo) }
        }
    }

    func presentAlert(_ message: String) {
        alertMessage = message
        isAlertPresented = true
    }
}
