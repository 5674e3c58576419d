import AVFoundation
import CoreML
import Observation
import PhotosUI
import SwiftUI
import UIKit

/// Everything the screen shows. It lives on the main actor and only ever changes there.
///
/// The work happens elsewhere: `CameraController` captures on its own queues, `Classifier` runs
/// Vision on a serial background queue, `ModelStore` loads models asynchronously and compiles
/// imported ones (an actor), and `PhotoDownsampler` decodes photos off the main actor. Their
/// results come back here with `Task { @MainActor in ... }` or `await`.
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
    /// The top 5: smoothed and updated about ten times a second for the camera, once for a photo.
    private(set) var predictions: [Prediction] = []
    /// Vision's time for one image, smoothed for the camera.
    private(set) var latencyMs: Double?
    /// Classified camera frames per second, smoothed.
    private(set) var framesPerSecond: Double?
    private(set) var inferenceError: String?
    /// The picked photo, downsampled and upright.
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
    /// Bumped by every load; a load that finds it changed has been superseded.
    @ObservationIgnored private var loadGeneration = 0
    /// Loads running now. A compute-unit change during one is picked up by that load.
    @ObservationIgnored private var loadsInFlight = 0
    /// Identifies the photo on screen, so a late result for an earlier photo is dropped.
    @ObservationIgnored private var photoGeneration = 0
    /// What `photo` shows, kept for Vision (again after a model change).
    @ObservationIgnored private var photoInput: DownsampledPhoto?
    @ObservationIgnored private var smoother = PredictionSmoother()
    @ObservationIgnored private var lastFrameResultTime: ContinuousClock.Instant?
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
            Task { @MainActor in self?.handle(event) }
        }
        let classifier = self.classifier
        camera.setFrameHandler { [weak self] pixelBuffer, orientation in
            classifier.classifyFrame(pixelBuffer, orientation: orientation) { result in
                Task { @MainActor in self?.handleFrameResult(result) }
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
        await reloadModel()
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
            smoother.reset()
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
        photoGeneration += 1  // a photo still loading must not take over
        source = .camera
        photo = nil
        photoInput = nil
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

    /// Each classified frame feeds the smoother; the list on screen changes only when the
    /// smoother publishes (about 10 Hz), so the labels stay readable.
    private func handleFrameResult(_ result: Result<Classification, Error>) {
        guard source == .camera else { return }
        switch result {
        case .success(let classification):
            // A frame that was in flight while the model changed belongs to the old model.
            guard classification.modelID == activeModelID else { return }
            let now = ContinuousClock.now
            if let published = smoother.add(classification.predictions, at: now) {
                predictions = published
            }
            latencyMs = Self.smoothed(latencyMs, classification.latencyMs)
            inferenceError = nil
            if let last = lastFrameResultTime {
                let seconds = Self.seconds(last.duration(to: now))
                if seconds > 0 {
                    framesPerSecond = Self.smoothed(framesPerSecond, 1 / seconds)
                }
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

    private static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    private func resetResults() {
        predictions = []
        latencyMs = nil
        framesPerSecond = nil
        inferenceError = nil
        lastFrameResultTime = nil
        smoother.reset()
    }

    // MARK: - Photos

    /// A photo was picked with `PhotosPicker`: load it, downsample it and classify it.
    func photoPicked(_ item: PhotosPickerItem) {
        let picked = PickedItem(item: item)
        Task { await classifyPhoto(picked) }
    }

    private func classifyPhoto(_ picked: PickedItem) async {
        photoGeneration += 1
        let generation = photoGeneration
        do {
            let downsampled = try await Self.loadPhoto(picked)
            // Another photo may have been picked while this one loaded.
            guard generation == photoGeneration else { return }
            source = .photo
            photoInput = downsampled
            photo = UIImage(cgImage: downsampled.image)
            camera.stop()
            resetResults()
            await classifyCurrentPhoto()
        } catch {
            guard generation == photoGeneration else { return }
            presentAlert("Could not load the photo: \(error.localizedDescription)")
        }
    }

    /// `PhotosPickerItem` is not `Sendable` in the iOS 17 SDK, and `loadTransferable` runs off
    /// the main actor. The item is an immutable value (an item identifier and content types)
    /// that the picker hands over and the app never mutates; it crosses once, here.
    private struct PickedItem: @unchecked Sendable {
        let item: PhotosPickerItem
    }

    /// Off the main actor: the transfer and the decode (tens of ms for a large photo).
    private nonisolated static func loadPhoto(_ picked: PickedItem) async throws -> DownsampledPhoto {
        guard let data = try await picked.item.loadTransferable(type: Data.self) else {
            throw PhotoDownsamplerError.notAnImage
        }
        return try await PhotoDownsampler.downsample(data)
    }

    private func classifyCurrentPhoto() async {
        guard source == .photo, let input = photoInput else { return }
        let generation = photoGeneration
        do {
            let classification = try await classifier.classify(input)
            // Another photo, the camera or another model may have taken over meanwhile.
            guard source == .photo, generation == photoGeneration,
                  classification.modelID == activeModelID
            else { return }
            predictions = Array(classification.predictions.prefix(smoother.shownCount))
            latencyMs = classification.latencyMs
            inferenceError = nil
        } catch {
            inferenceError = error.localizedDescription
        }
    }

    // MARK: - Models

    /// The picker changed: Core ML fixes compute units at load time, so load again. A load
    /// already running (an import's, say) checks the choice when it finishes and loads again
    /// itself, so it never installs a model with the old setting.
    func computeUnitsChanged() {
        guard loadsInFlight == 0 else { return }
        Task { await reloadModel() }
    }

    /// Back from an imported model to the one in the app bundle.
    func useBundledModel() {
        modelSource = .bundled
        usesImportedModel = false
        Task { await reloadModel() }
    }

    /// Compiles (or takes from the cache) and loads a model picked in Files. The current model
    /// stays in use until the new one has loaded, and stays if it cannot be used.
    func importModel(from url: URL) async {
        isImporting = true
        defer { isImporting = false }
        do {
            let source = try await store.compiledSource(forImportedModelAt: url)
            try await load(source)
        } catch is CancellationError {
            return
        } catch {
            presentAlert("\(url.lastPathComponent) cannot be used: \(error.localizedDescription)")
            // A reload this import superseded (another compute-unit choice) never finished:
            // do it now, so the current model runs with the units the picker shows.
            if case .loading = modelStatus {
                await reloadModel()
            }
        }
    }

    /// (Re)loads the current source, showing progress; on failure the screen says why.
    private func reloadModel() async {
        let source = modelSource
        modelStatus = .loading(source.displayName)
        do {
            try await load(source)
        } catch is CancellationError {
            return
        } catch {
            classifier.use(nil)
            activeModelID = nil
            resetResults()
            modelStatus = .failed(error.localizedDescription)
        }
    }

    /// Loads `source` with the compute units chosen when the load ends, and installs it.
    ///
    /// Throws `CancellationError` when a newer load superseded this one (nothing is installed).
    /// When the compute-unit choice changed while Core ML was loading, the model is loaded again
    /// with the new choice before anything is installed.
    private func load(_ source: ModelStore.Source) async throws {
        loadGeneration += 1
        let generation = loadGeneration
        loadsInFlight += 1
        defer { loadsInFlight -= 1 }
        var units = computeUnits
        while true {
            let loaded: LoadedModel
            do {
                loaded = try await ModelStore.load(source, computeUnits: units.mlComputeUnits)
            } catch {
                // A superseded load's failure is not news: the newer load reports its own.
                guard generation == loadGeneration else { throw CancellationError() }
                // The picker changed while this load failed: the failure belongs to the old
                // setting (a model one compute unit rejects, say). Try the one the picker shows
                // rather than report an error for a setting that is no longer chosen.
                if units != computeUnits {
                    units = computeUnits
                    continue
                }
                throw error
            }
            guard generation == loadGeneration else { throw CancellationError() }
            if units == computeUnits {
                modelSource = source
                usesImportedModel = source != .bundled
                install(loaded)
                return
            }
            units = computeUnits
        }
    }

    private func install(_ loaded: LoadedModel) {
        classifier.use(loaded)
        activeModelID = loaded.id
        modelStatus = .ready(loaded.info)
        resetResults()
        if source == .photo, photoInput != nil {
            Task { await classifyCurrentPhoto() }
        }
    }

    func presentAlert(_ message: String) {
        alertMessage = message
        isAlertPresented = true
    }
}
