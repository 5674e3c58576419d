import SwiftUI
import UIKit

/// Shown instead of the preview when camera access is denied or restricted.
@MainActor
struct PermissionView: View {
    /// Restricted: Screen Time or device management blocks the camera, and the user may not be
    /// able to change it. Denied: the user said no and can say yes in Settings.
    let isRestricted: Bool
    @Environment(\.openURL) private var openURL

    var body: some View {
        VStack(spacing: 16) {
            Image(systemName: "camera.fill")
                .font(.system(size: 44))
                .foregroundStyle(.secondary)
            Text(isRestricted ? "Camera access is restricted" : "Camera access is off")
                .font(.title3.bold())
            Text(explanation)
                .multilineTextAlignment(.center)
                .foregroundStyle(.secondary)
            Button {
                openSettings()
            } label: {
                Label("Open Settings", systemImage: "gear")
            }
            .buttonStyle(.borderedProminent)
            Text("You can still classify photos from your library.")
                .font(.footnote)
                .foregroundStyle(.secondary)
        }
        .padding(32)
    }

    private var explanation: String {
        if isRestricted {
            return "A Screen Time or device-management setting blocks the camera for this app. "
                + "If you manage this device, allow the camera in Settings."
        }
        return "MobileNet classifies what the camera sees, on this device; no image leaves it. "
            + "Turn on Camera for MobileNet in Settings."
    }

    private func openSettings() {
        guard let url = URL(string: UIApplication.openSettingsURLString) else { return }
        openURL(url)
    }
}
