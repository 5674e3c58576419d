import SwiftUI

/// Entry point. One `AppModel` owns the camera, the classifier and the model store for the
/// lifetime of the process; the views read it from the environment.
///
/// `@MainActor` explicitly: the iOS 17 SDK does not isolate `App` itself, and `AppModel()` is a
/// main-actor initializer (an error in the Swift 6 language mode without it).
@main
@MainActor
struct MobileNetDemoApp: App {
    @State private var model = AppModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environment(model)
        }
    }
}
