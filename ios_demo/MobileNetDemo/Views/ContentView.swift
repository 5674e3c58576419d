import PhotosUI
import SwiftUI
import UniformTypeIdentifiers

/// The one screen: the camera (or a picked photo) full screen, the top-5 panel and the controls
/// over it.
@MainActor
struct ContentView: View {
    @Environment(AppModel.self) private var model
    @Environment(\.scenePhase) private var scenePhase
    @State private var photoItem: PhotosPickerItem?
    @State private var isImporterPresented = false

    var body: some View {
        ZStack {
            Color.black.ignoresSafeArea()
            background
            VStack(spacing: 12) {
                Spacer(minLength: 0)
                PredictionsPanel(
                    status: model.modelStatus,
                    predictions: model.predictions,
                    latencyMs: model.latencyMs,
                    framesPerSecond: model.source == .camera ? model.framesPerSecond : nil,
                    error: model.inferenceError,
                    hint: hint)
                ControlsBar(photoItem: $photoItem, isImporterPresented: $isImporterPresented)
            }
            .padding()
            if model.isImporting {
                ProgressView("Compiling model…")
                    .padding(24)
                    .background(.regularMaterial, in: RoundedRectangle(cornerRadius: 16))
            }
        }
        .preferredColorScheme(.dark)
        .task { await model.start() }
        .onChange(of: scenePhase) { _, phase in
            model.scenePhaseChanged(phase)
        }
        .onChange(of: photoItem) { _, item in
            guard let item else { return }
            photoItem = nil
            model.photoPicked(item)
        }
        .fileImporter(
            isPresented: $isImporterPresented,
            allowedContentTypes: ModelStore.importableTypes
        ) { result in
            switch result {
            case .success(let url):
                Task { [model] in await model.importModel(from: url) }
            case .failure(let error):
                model.presentAlert("Could not open the file: \(error.localizedDescription)")
            }
        }
        .alert("MobileNet", isPresented: Bindable(model).isAlertPresented) {
            Button("OK", role: .cancel) {}
        } message: {
            Text(model.alertMessage)
        }
    }

    @ViewBuilder
    private var background: some View {
        switch model.source {
        case .photo:
            if let photo = model.photo {
                Image(uiImage: photo)
                    .resizable()
                    .scaledToFit()
                    .overlay { CenterSquareOutline() }
                    .accessibilityLabel("The photo being classified")
            } else {
                MessageView(
                    systemImage: "photo.on.rectangle",
                    title: "Choose a photo",
                    message: model.hasCamera
                        ? "Pick a photo from your library to classify it."
                        : "The Simulator has no camera. Pick a photo from the library to classify it.")
            }
        case .camera:
            switch model.cameraStatus {
            case .running, .paused:
                CameraPreview(camera: model.camera)
                    .ignoresSafeArea()
                    .overlay {
                        if let reason = model.pausedReason {
                            MessageView(systemImage: "pause.circle", title: "Camera paused", message: reason)
                                .frame(maxWidth: .infinity, maxHeight: .infinity)
                                .background(.black.opacity(0.6))
                        }
                    }
            case .starting:
                ProgressView("Starting the camera…")
            case .denied:
                PermissionView(isRestricted: false)
            case .restricted:
                PermissionView(isRestricted: true)
            case .unavailable(let message):
                MessageView(systemImage: "video.slash", title: "Camera unavailable", message: message)
            }
        }
    }

    /// What to do next, while there is nothing to show yet.
    private var hint: String {
        switch model.source {
        case .camera:
            return "Point the camera at an object; the dashed square is what the model sees."
        case .photo:
            return model.photo == nil ? "Pick a photo to classify." : "Classifying…"
        }
    }
}

/// The dashed outline of the centered square of whatever it overlays: laid over a photo shown
/// `scaledToFit`, it marks exactly what Vision's `.centerCrop` gives the model, as the camera
/// preview's outline does for frames.
@MainActor
struct CenterSquareOutline: View {
    var body: some View {
        GeometryReader { geometry in
            let side = min(geometry.size.width, geometry.size.height)
            Rectangle()
                .stroke(.white.opacity(0.75), style: StrokeStyle(lineWidth: 2, dash: [10, 6]))
                .frame(width: side, height: side)
                .position(x: geometry.size.width / 2, y: geometry.size.height / 2)
        }
        .allowsHitTesting(false)
        .accessibilityHidden(true)
    }
}

/// A centered icon, title and explanation.
@MainActor
struct MessageView: View {
    let systemImage: String
    let title: String
    let message: String

    var body: some View {
        VStack(spacing: 12) {
            Image(systemName: systemImage)
                .font(.system(size: 44))
                .foregroundStyle(.secondary)
            Text(title)
                .font(.title3.bold())
            Text(message)
                .multilineTextAlignment(.center)
                .foregroundStyle(.secondary)
        }
        .padding(32)
        .accessibilityElement(children: .combine)
    }
}
