import SwiftUI

/// Entry point. One `AppModel` owns the camera, the classifier and the model store for the
/// lifetime of the process; the views read it from the environment.
@main
struct MobileNetDemoApp: App {
    @State private var model = AppModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environment(model)
        }
    }
}
