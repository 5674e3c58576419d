import AVFoundation
import CoreMedia
import ImageIO
import UIKit

/// The capture pipeline: the back wide-angle camera into an `AVCaptureVideoDataOutput` that
/// delivers BGRA pixel buffers to the classifier.
///
/// Threading:
/// - `sessionQueue` (serial): configuration, `startRunning()` and `stopRunning()`, which block
///   and must stay off the main thread.
/// - `videoQueue` (serial): the sample-buffer delegate. With `alwaysDiscardsLateVideoFrames`
///   the output drops frames while a callback is still running, so the callback only hands the
///   buffer on and returns.
/// - main actor: the preview view and the rotation coordinator.
///
/// State read on more than one of those is guarded by `lock`; that is what makes the
/// `@unchecked Sendable` true.
final class CameraController: NSObject, @unchecked Sendable {
    typealias FrameHandler = @Sendable (CVPixelBuffer, CGImagePropertyOrientation) -> Void
    typealias EventHandler = @Sendable (Event) -> Void

    enum Event: Sendable {
        case started
        case interrupted(String)
        case interruptionEnded
        case failed(String)
    }

    enum CameraError: LocalizedError {
        case noCamera
        case cannotAddInput
        case cannotAddOutput

        var errorDescription: String? {
            switch self {
            case .noCamera:
                return "This device has no back camera."
            case .cannotAddInput:
                return "The camera could not be connected to the capture session."
            case .cannotAddOutput:
                return "The capture session cannot deliver video frames."
            }
        }
    }

    let session = AVCaptureSession()
    private let videoOutput = AVCaptureVideoDataOutput()
    private let sessionQueue = DispatchQueue(label: "MobileNetDemo.camera.session")
    private let videoQueue = DispatchQueue(label: "MobileNetDemo.camera.video", qos: .userInitiated)

    private let lock = NSLock()
    // Guarded by lock.
    private var frameHandler: FrameHandler?
    private var eventHandler: EventHandler?
    private var videoDevice: AVCaptureDevice?
    private var bufferSize: CGSize?
    /// Portrait until the rotation coordinator says otherwise.
    private var captureOrientation: CGImagePropertyOrientation = .right

    // sessionQueue only.
    private var isConfigured = false
    private var wantsToRun = false

    // Main actor only.
    private weak var previewView: PreviewView?
    private var rotationCoordinator: AVCaptureDevice.RotationCoordinator?
    private var rotationObservations: [NSKeyValueObservation] = []

    private var notificationTokens: [NSObjectProtocol] = []

    override init() {
        super.init()
        observeSessionNotifications()
    }

    deinit {
        for token in notificationTokens {
            NotificationCenter.default.removeObserver(token)
        }
    }

    /// Receives every frame the classifier should see, on the video queue.
    func setFrameHandler(_ handler: @escaping FrameHandler) {
        lock.withLock { frameHandler = handler }
    }

    /// Receives session events (started, interrupted, failed) on an arbitrary thread.
    func setEventHandler(_ handler: @escaping EventHandler) {
        lock.withLock { eventHandler = handler }
    }

    // MARK: - Session

    /// Builds the session once; later calls return at once. Call only after camera access was
    /// granted.
    func configure() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            sessionQueue.async {
                do {
                    try self.configureIfNeeded()
                    continuation.resume()
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// Starts the session on the session queue (`startRunning()` blocks for a while).
    func start() {
        sessionQueue.async {
            self.wantsToRun = true
            guard self.isConfigured else { return }
            if !self.session.isRunning {
                self.session.startRunning()
            }
            if self.session.isRunning && !self.session.isInterrupted {
                self.emit(.started)
            }
        }
    }

    /// Stops the session on the session queue: in the background, or while showing a photo.
    func stop() {
        sessionQueue.async {
            self.wantsToRun = false
            if self.session.isRunning {
                self.session.stopRunning()
            }
        }
    }

    /// Session queue only.
    private func configureIfNeeded() throws {
        guard !isConfigured else { return }
        guard let device = AVCaptureDevice.default(.builtInWideAngleCamera, for: .video, position: .back)
        else {
            throw CameraError.noCamera
        }
        let input = try AVCaptureDeviceInput(device: device)

        session.beginConfiguration()
        defer { session.commitConfiguration() }
        // 1280x720 keeps the full-screen preview sharp and is still cheap: Vision scales the
        // center square down to the model's input size.
        if session.canSetSessionPreset(.hd1280x720) {
            session.sessionPreset = .hd1280x720
        }
        guard session.canAddInput(input) else {
            throw CameraError.cannotAddInput
        }
        session.addInput(input)

        videoOutput.videoSettings = [
            kCVPixelBufferPixelFormatTypeKey as String: Int(kCVPixelFormatType_32BGRA)
        ]
        videoOutput.alwaysDiscardsLateVideoFrames = true
        videoOutput.setSampleBufferDelegate(self, queue: videoQueue)
        guard session.canAddOutput(videoOutput) else {
            session.removeInput(input)
            throw CameraError.cannotAddOutput
        }
        session.addOutput(videoOutput)

        lock.withLock { videoDevice = device }
        isConfigured = true
    }

    private func emit(_ event: Event) {
        let handler = lock.withLock { eventHandler }
        handler?(event)
    }

    // MARK: - Interruptions and errors

    private func observeSessionNotifications() {
        let center = NotificationCenter.default
        notificationTokens = [
            center.addObserver(
                forName: AVCaptureSession.wasInterruptedNotification, object: session, queue: nil
            ) { [weak self] notification in
                let rawReason = notification.userInfo?[AVCaptureSessionInterruptionReasonKey] as? Int
                let reason = rawReason.flatMap(AVCaptureSession.InterruptionReason.init(rawValue:))
                self?.emit(.interrupted(CameraController.describe(reason)))
            },
            center.addObserver(
                forName: AVCaptureSession.interruptionEndedNotification, object: session, queue: nil
            ) { [weak self] _ in
                self?.emit(.interruptionEnded)
            },
            center.addObserver(
                forName: AVCaptureSession.runtimeErrorNotification, object: session, queue: nil
            ) { [weak self] notification in
                let error = notification.userInfo?[AVCaptureSessionErrorKey] as? AVError
                self?.recover(from: error)
            },
        ]
    }

    private func recover(from error: AVError?) {
        sessionQueue.async {
            // A media-services reset only needs a restart (as in Apple's AVCam sample).
            if error?.code == .mediaServicesWereReset, self.wantsToRun {
                self.session.startRunning()
                if self.session.isRunning {
                    self.emit(.started)
                    return
                }
            }
            self.emit(.failed(error?.localizedDescription ?? "The camera stopped unexpectedly."))
        }
    }

    private static func describe(_ reason: AVCaptureSession.InterruptionReason?) -> String {
        switch reason {
        case .videoDeviceNotAvailableInBackground?:
            return "The camera is paused while the app is in the background."
        case .videoDeviceInUseByAnotherClient?, .audioDeviceInUseByAnotherClient?:
            return "Another app is using the camera."
        case .videoDeviceNotAvailableWithMultipleForegroundApps?:
            return "The camera is not available in Split View or Slide Over. Use the app full screen."
        case .videoDeviceNotAvailableDueToSystemPressure?:
            return "The camera is paused because the device is too warm."
        default:
            return "The camera was interrupted by the system."
        }
    }

    // MARK: - Preview and rotation (main actor)

    /// Connects the on-screen preview; `CameraPreview` calls this when it makes its view.
    @MainActor
    func attach(_ view: PreviewView) {
        previewView = view
        view.bufferSize = lock.withLock { bufferSize }
        trackRotation()
    }

    /// (Re)creates the rotation coordinator once the device exists, with the preview layer if
    /// one is attached. The coordinator follows the device's physical orientation (gravity),
    /// not the interface orientation, which is what the classifier needs.
    @MainActor
    func trackRotation() {
        guard let device = lock.withLock({ videoDevice }) else { return }
        let coordinator = AVCaptureDevice.RotationCoordinator(
            device: device, previewLayer: previewView?.previewLayer)
        rotationCoordinator = coordinator
        applyPreviewRotation(coordinator.videoRotationAngleForHorizonLevelPreview)
        setCaptureRotation(coordinator.videoRotationAngleForHorizonLevelCapture)
        // The coordinator delivers its KVO notifications on the main queue (AVFoundation
        // documents this), so the preview angle is applied right there, in the same turn of
        // the run loop: hopping through `Task { @MainActor in ... }` would draw one frame with
        // the old rotation. The handlers are `@Sendable` (KVO does not promise an isolation),
        // and `MainActor.assumeIsolated` states, and checks at run time, where they run.
        rotationObservations = [
            coordinator.observe(\.videoRotationAngleForHorizonLevelPreview, options: .new) {
                @Sendable [weak self] _, change in
                guard let self, let angle = change.newValue else { return }
                MainActor.assumeIsolated { self.applyPreviewRotation(angle) }
            },
            coordinator.observe(\.videoRotationAngleForHorizonLevelCapture, options: .new) {
                @Sendable [weak self] _, change in
                guard let self, let angle = change.newValue else { return }
                self.setCaptureRotation(angle)
            },
        ]
    }

    @MainActor
    private func applyPreviewRotation(_ angle: CGFloat) {
        guard let view = previewView, let connection = view.previewLayer.connection,
              connection.isVideoRotationAngleSupported(angle)
        else { return }
        connection.videoRotationAngle = angle
        view.setNeedsLayout()
    }

    /// The video connection stays unrotated; Vision gets the orientation instead.
    private func setCaptureRotation(_ angle: CGFloat) {
        let orientation = CGImagePropertyOrientation(uprightRotationDegrees: angle)
        lock.withLock { captureOrientation = orientation }
    }
}

extension CameraController: AVCaptureVideoDataOutputSampleBufferDelegate {
    /// Runs on `videoQueue` for every frame the output did not drop.
    func captureOutput(
        _ output: AVCaptureOutput,
        didOutput sampleBuffer: CMSampleBuffer,
        from connection: AVCaptureConnection
    ) {
        guard let pixelBuffer = CMSampleBufferGetImageBuffer(sampleBuffer) else { return }
        let size = CGSize(
            width: CVPixelBufferGetWidth(pixelBuffer), height: CVPixelBufferGetHeight(pixelBuffer))
        let (handler, orientation, sizeChanged) = lock.withLock {
            () -> (FrameHandler?, CGImagePropertyOrientation, Bool) in
            let changed = bufferSize != size
            bufferSize = size
            return (frameHandler, captureOrientation, changed)
        }
        if sizeChanged {
            Task { @MainActor in self.previewView?.bufferSize = size }
        }
        handler?(pixelBuffer, orientation)
    }
}
