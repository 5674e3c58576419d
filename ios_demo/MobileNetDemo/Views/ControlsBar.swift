import PhotosUI
import SwiftUI

/// Compute units, photo library, back to the camera, and the model menu (Files import).
@MainActor
struct ControlsBar: View {
    @Environment(AppModel.self) private var model
    @Binding var photoItem: PhotosPickerItem?
    @Binding var isImporterPresented: Bool

    var body: some View {
        HStack(spacing: 10) {
            Menu {
                Picker("Compute units", selection: Bindable(model).computeUnits) {
                    ForEach(ComputeUnitsOption.allCases) { option in
                        Text(option.title).tag(option)
                    }
                }
            } label: {
                ControlLabel(
                    title: model.computeUnitsSelectable ? model.computeUnits.shortTitle : "CPU (Simulator)",
                    systemImage: "cpu")
            }
            .disabled(!model.computeUnitsSelectable)
            .accessibilityLabel("Compute units: \(model.computeUnits.title)")
            .onChange(of: model.computeUnits) {
                model.computeUnitsChanged()
            }

            PhotosPicker(selection: $photoItem, matching: .images) {
                ControlLabel(title: "Photo", systemImage: "photo.on.rectangle")
            }

            if model.hasCamera && model.source == .photo {
                Button {
                    model.useCamera()
                } label: {
                    ControlLabel(title: "Camera", systemImage: "camera")
                }
            }

            Menu {
                Button {
                    isImporterPresented = true
                } label: {
                    Label("Import a model from Files…", systemImage: "folder")
                }
                if model.usesImportedModel {
                    Button {
                        model.useBundledModel()
                    } label: {
                        Label("Use the bundled \(ModelStore.bundledModelName)", systemImage: "shippingbox")
                    }
                }
            } label: {
                ControlLabel(title: "Model", systemImage: "square.stack.3d.up")
            }
            .disabled(model.isImporting)
        }
        .buttonStyle(.plain)
    }
}

/// An icon over a short caption, on a translucent capsule.
@MainActor
struct ControlLabel: View {
    let title: String
    let systemImage: String

    var body: some View {
        VStack(spacing: 4) {
            Image(systemName: systemImage)
                .font(.title3)
            Text(title)
                .font(.caption2)
                .lineLimit(1)
        }
        .frame(minWidth: 64, minHeight: 48)
        .padding(.horizontal, 6)
        .padding(.vertical, 4)
        .background(.ultraThinMaterial, in: RoundedRectangle(cornerRadius: 12))
        .contentShape(Rectangle())
    }
}
