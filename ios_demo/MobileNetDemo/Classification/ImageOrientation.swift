import CoreGraphics
import ImageIO

extension CGImagePropertyOrientation {
    /// The orientation of a raw (unrotated) back-camera buffer, given the clockwise rotation in
    /// degrees that would make it level: `AVCaptureDevice.RotationCoordinator`'s
    /// `videoRotationAngleForHorizonLevelCapture`.
    ///
    /// The back camera's sensor is landscape: its buffers are upright when the device is in
    /// landscape with the top of the device on the left (`UIDeviceOrientation.landscapeLeft`),
    /// where the coordinator reports 0 degrees. The app leaves the video connection unrotated
    /// (rotating every frame costs time) and tells Vision instead:
    ///
    /// | device orientation      | angle | orientation |
    /// |-------------------------|-------|-------------|
    /// | portrait                | 90    | `.right`    |
    /// | landscapeLeft           | 0     | `.up`       |
    /// | portraitUpsideDown      | 270   | `.left`     |
    /// | landscapeRight          | 180   | `.down`     |
    ///
    /// The front camera would need the mirrored variants; this app uses the back camera only.
    init(uprightRotationDegrees degrees: CGFloat) {
        let quarterTurns = (Int((degrees / 90).rounded()) % 4 + 4) % 4
        switch quarterTurns {
        case 1: self = .right
        case 2: self = .down
        case 3: self = .left
        default: self = .up
        }
    }
}
