import CoreML
import CoreVideo
import Foundation
import ImageIO
import Vision

/// One label and its probability.
struct Prediction: Identifiable, Hashable, Sendable {
    let label: String
    let confidence: Double

    var id: String { label }
}

/// The top predictions for one image, how long Vision took, and which model produced them.
struct Classification: Sendable {
    let predictions: [Prediction]
    let latencyMs: Double
    let modelID: UUID
}

/// A model ready for Vision. It is built once per (model, compute units) by `ModelStore`, off the
/// main thread, and never changes afterwards.
final class LoadedModel: @unchecked Sendable {
    let id = UUID()
    let info: ModelInfo
    let computeUnits: MLComputeUnits
    /// Immutable after init. Each request is created and performed on the classifier's serial
    /// queue, so the model is never used by two requests at once.
    let visionModel: VNCoreMLModel

    init(model: MLModel, name: String, computeUnits: MLComputeUnits) throws {
        let info = try ModelInfo(name: name, description: model.modelDescription)
        let visionModel = try VNCoreMLModel(for: model)
        visionModel.inputImageFeatureName = info.imageInputName
        self.info = info
        self.computeUnits = computeUnits
        self.visionModel = visionModel
    }
}

enum ClassifierError: LocalizedError {
    case noModel
    case notClassifications

    var errorDescription: String? {
        switch self {
        case .noModel:
            return "No model is loaded yet."
        case .notClassifications:
            return "The model did not return class probabilities."
        }
    }
}

/// Runs Vision on a serial background queue.
///
/// Camera frames: at most one request is in flight. `inFlight` is taken without waiting on the
/// capture queue; when it is still held, the frame is dropped rather than queued, so results
/// never lag behind the camera and only one pixel buffer is held at a time. Still images wait
/// their turn on the same serial queue instead of being dropped.
final class Classifier: @unchecked Sendable {
    static let topK = 5

    private let queue = DispatchQueue(label: "MobileNetDemo.inference", qos: .userInitiated)
    private let inFlight = DispatchSemaphore(value: 1)
    private let lock = NSLock()
    private var model: LoadedModel?  // guarded by lock

    /// Swaps the model; a request already running finishes with the old one, and its result
    /// carries the old model's ID so the caller can ignore it.
    func use(_ model: LoadedModel?) {
        lock.withLock { self.model = model }
    }

    private var currentModel: LoadedModel? {
        lock.withLock { model }
    }

    /// Called on the capture queue for each frame. Returns false when the frame was dropped.
    @discardableResult
    func classifyFrame(
        _ pixelBuffer: CVPixelBuffer,
        orientation: CGImagePropertyOrientation,
        completion: @escaping @Sendable (Result<Classification, Error>) -> Void
    ) -> Bool {
        guard inFlight.wait(timeout: .now()) == .success else {
            return false
        }
        guard let model = currentModel else {
            inFlight.signal()
            return false
        }
        queue.async {
            defer { self.inFlight.signal() }
            let handler = VNImageRequestHandler(
                cvPixelBuffer: pixelBuffer, orientation: orientation, options: [:])
            completion(Result { try Self.classify(handler, with: model) })
        }
        return true
    }

    /// Classifies a still image (a photo from the library) with its EXIF orientation.
    func classify(
        _ image: CGImage, orientation: CGImagePropertyOrientation
    ) async throws -> Classification {
        guard let model = currentModel else {
            throw ClassifierError.noModel
        }
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                let handler = VNImageRequestHandler(
                    cgImage: image, orientation: orientation, options: [:])
                continuation.resume(with: Result { try Self.classify(handler, with: model) })
            }
        }
    }

    private static func classify(
        _ handler: VNImageRequestHandler, with model: LoadedModel
    ) throws -> Classification {
        let request = VNCoreMLRequest(model: model.visionModel)
        // The model sees the centered square of the image, scaled to its input size: no
        // stretching, the same framing a photo app's square crop gives. The camera preview
        // outlines that square.
        request.imageCropAndScaleOption = .centerCrop
        let start = DispatchTime.now().uptimeNanoseconds
        try handler.perform([request])
        let latencyMs = Double(DispatchTime.now().uptimeNanoseconds - start) / 1_000_000
        guard let observations = request.results as? [VNClassificationObservation] else {
            throw ClassifierError.notClassifications
        }
        let top = observations
            .sorted { $0.confidence > $1.confidence }
            .prefix(topK)
            .map { Prediction(label: $0.identifier, confidence: Double($0.confidence)) }
        return Classification(predictions: top, latencyMs: latencyMs, modelID: model.id)
    }
}
