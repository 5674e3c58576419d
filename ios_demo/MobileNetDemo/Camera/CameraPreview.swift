import AVFoundation
import SwiftUI
import UIKit

/// A view backed by an `AVCaptureVideoPreviewLayer`, so the preview resizes with the view.
///
/// A dashed outline marks the centered square of the camera frame: with
/// `imageCropAndScaleOption = .centerCrop`, that square is exactly what the model classifies.
final class PreviewView: UIView {
    override class var layerClass: AnyClass { AVCaptureVideoPreviewLayer.self }

    var previewLayer: AVCaptureVideoPreviewLayer {
        // `layerClass` makes the backing layer a preview layer.
        layer as! AVCaptureVideoPreviewLayer
    }

    /// Size of the camera's pixel buffers, set by `CameraController` when the first frame
    /// arrives; the outline needs it.
    var bufferSize: CGSize? {
        didSet { setNeedsLayout() }
    }

    private let cropOutline = CAShapeLayer()

    override init(frame: CGRect) {
        super.init(frame: frame)
        setUp()
    }

    required init?(coder: NSCoder) {
        super.init(coder: coder)
        setUp()
    }

    private func setUp() {
        backgroundColor = .black
        previewLayer.videoGravity = .resizeAspectFill
        cropOutline.fillColor = UIColor.clear.cgColor
        cropOutline.strokeColor = UIColor.white.withAlphaComponent(0.75).cgColor
        cropOutline.lineWidth = 2
        cropOutline.lineDashPattern = [10, 6]
        layer.addSublayer(cropOutline)
    }

    override func layoutSubviews() {
        super.layoutSubviews()
        CATransaction.begin()
        CATransaction.setDisableActions(true)
        defer { CATransaction.commit() }
        cropOutline.frame = bounds
        guard let size = bufferSize, size.width > 0, size.height > 0,
              previewLayer.connection != nil
        else {
            cropOutline.path = nil
            return
        }
        // Metadata-output rects are normalized buffer coordinates, before rotation; the layer
        // converts them with its current rotation and gravity, so the square stays right in
        // every orientation.
        let side = min(size.width, size.height)
        let square = CGRect(
            x: (size.width - side) / 2 / size.width,
            y: (size.height - side) / 2 / size.height,
            width: side / size.width,
            height: side / size.height)
        let rect = previewLayer.layerRectConverted(fromMetadataOutputRect: square)
        cropOutline.path = UIBezierPath(rect: rect).cgPath
    }
}

/// The full-screen camera preview for SwiftUI.
@MainActor
struct CameraPreview: UIViewRepresentable {
    let camera: CameraController

    func makeUIView(context: Context) -> PreviewView {
        let view = PreviewView()
        view.previewLayer.session = camera.session
        camera.attach(view)
        return view
    }

    func updateUIView(_ uiView: PreviewView, context: Context) {
        // The session, rotation and outline are driven by the camera controller, not by
        // SwiftUI state, so there is nothing to update here.
    }
}
