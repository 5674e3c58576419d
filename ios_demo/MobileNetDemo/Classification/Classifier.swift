import CoreGraphics
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
    /// The most likely labels, best first: at most `Classifier.reportedCount`, fewer when the
    /// model has fewer classes.
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
    /// queue (or, once, by `ModelStore`'s warm-up before the model is handed out), so the model
    /// is never used by two requests at once.
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

/// An image handed from the thread that produced it to the inference queue.
///
/// `CVPixelBuffer` and `CGImage` are not `Sendable`. The ownership is clear: the sender (the
/// capture queue, or the main actor for a photo) never touches the image after handing it over,
/// and Vision only reads it. That is what makes the `@unchecked Sendable` true.
struct VisionInput: @unchecked Sendable {
    enum Image {
        case pixelBuffer(CVPixelBuffer)
        case cgImage(CGImage)
    }

    let image: Image
    let orientation: CGImagePropertyOrientation

    func makeHandler() -> VNImageRequestHandler {
        switch image {
        case .pixelBuffer(let buffer):
            return VNImageRequestHandler(cvPixelBuffer: buffer, orientation: orientation, options: [:])
        case .cgImage(let image):
            return VNImageRequestHandler(cgImage: image, orientation: orientation, options: [:])
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
    /// How many of the best labels each result carries: enough for the smoother to see a label
    /// rising before it reaches the top 5 on screen.
    static let reportedCount = 10

    /// `.workItem`: Vision autoreleases about a thousand observations per frame; draining the
    /// pool after each request keeps memory flat at 30 frames a second.
    private let queue = DispatchQueue(
        label: "MobileNetDemo.inference", qos: .userInitiated, autoreleaseFrequency: .workItem)
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
        let input = VisionInput(image: .pixelBuffer(pixelBuffer), orientation: orientation)
        queue.async {
            defer { self.inFlight.signal() }
            completion(Result { try Self.classify(input, with: model) })
        }
        return true
    }

    /// Classifies a still photo. It is upright already: the thumbnail applied its EXIF
    /// orientation.
    func classify(_ photo: DownsampledPhoto) async throws -> Classification {
        guard let model = currentModel else {
            throw ClassifierError.noModel
        }
        let input = VisionInput(image: .cgImage(photo.image), orientation: .up)
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: Result { try Self.classify(input, with: model) })
            }
        }
    }

    /// One request through the same path the camera uses, on a blank buffer of the model's input
    /// size: the first Core ML prediction after a load (Neural Engine compilation, buffer
    /// allocation) is many times slower than the rest, and must not be the first latency shown.
    static func warmUp(_ model: LoadedModel) throws {
        var buffer: CVPixelBuffer?
        let status = CVPixelBufferCreate(
            kCFAllocatorDefault, model.info.inputWidth, model.info.inputHeight,
            kCVPixelFormatType_32BGRA, nil, &buffer)
        guard status == kCVReturnSuccess, let buffer else { return }
        _ = try autoreleasepool {
            try classify(VisionInput(image: .pixelBuffer(buffer), orientation: .up), with: model)
        }
    }

    private static func classify(_ input: VisionInput, with model: LoadedModel) throws -> Classification {
        let request = VNCoreMLRequest(model: model.visionModel)
        // The model sees the centered square of the image, scaled to its input size: no
        // stretching, the same framing a photo app's square crop gives. The camera preview and
        // the photo view outline that square.
        request.imageCropAndScaleOption = .centerCrop
        let handler = input.makeHandler()
        let clock = ContinuousClock()
        let start = clock.now
        try handler.perform([request])
        let elapsed = start.duration(to: clock.now)
        let latencyMs = Double(elapsed.components.seconds) * 1_000
            + Double(elapsed.components.attoseconds) / 1e15
        guard let observations = request.results as? [VNClassificationObservation] else {
            throw ClassifierError.notClassifications
        }
        // Whatever labels the model has, however many: a 3-class model yields 3 predictions.
        let top = observations
            .sorted { $0.confidence > $1.confidence }
            .prefix(reportedCount)
            .map { Prediction(label: $0.identifier, confidence: Double($0.confidence)) }
        return Classification(predictions: top, latencyMs: latencyMs, modelID: model.id)
    }
}
