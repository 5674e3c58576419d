import CoreML
import Foundation
import UniformTypeIdentifiers

extension UTType {
    /// A Core ML package (`.mlpackage`), a directory that Files shows as one document. The app
    /// declares it in Info.plist (`UTImportedTypeDeclarations`) because iOS itself may not.
    static let coreMLPackage = UTType(importedAs: "com.apple.coreml.mlpackage", conformingTo: .package)
    /// A Core ML model (`.mlmodel`), a single file; declared in Info.plist the same way.
    static let coreMLModel = UTType(importedAs: "com.apple.coreml.model", conformingTo: .data)
}

enum ModelStoreError: LocalizedError {
    case cannotReadFile(String, underlying: Error)

    var errorDescription: String? {
        switch self {
        case .cannotReadFile(let name, let underlying):
            return "Could not read \(name): \(underlying.localizedDescription)"
        }
    }
}

/// Loads models off the main actor: the bundled `MobileNetV1`, or one the user picked in Files,
/// compiled on the device and cached. An actor is reentrant at every `await` (the coordinated
/// read, the compilation), so it does not by itself keep two imports apart: the app starts one
/// import at a time (the Model menu is disabled while `AppModel.isImporting`), which is what
/// keeps two imports from writing the cache at once.
actor ModelStore {
    /// Where a model comes from. Reloading a source with other compute units never recompiles.
    enum Source: Equatable, Sendable {
        case bundled
        case compiled(url: URL, name: String)

        var displayName: String {
            switch self {
            case .bundled: return ModelStore.bundledModelName
            case .compiled(_, let name): return name
            }
        }
    }

    static let importableTypes: [UTType] = [.coreMLPackage, .coreMLModel]

    /// Xcode compiles `MobileNetV1.mlpackage` (it is in the target's Sources phase) into the app
    /// bundle as `MobileNetV1.mlmodelc` and generates the `MobileNetV1` class from it.
    static let bundledModelName = String(describing: MobileNetV1.self)

    private static let cacheFolderName = "CompiledModels"

    /// Loads a model asynchronously, wraps it for Vision and runs one warm-up prediction.
    /// Throws when it is not an image classifier.
    ///
    /// `MLModel.load(contentsOf:configuration:)` does not block a thread while Core ML prepares
    /// the model, which for the Neural Engine can take seconds on the first load. Static, so not
    /// isolated to the actor: loads (another compute-unit choice) need not wait for an import.
    static func load(_ source: Source, computeUnits: MLComputeUnits) async throws -> LoadedModel {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        let url: URL
        switch source {
        case .bundled:
            // The generated class knows where Xcode put the compiled model.
            url = MobileNetV1.urlOfModelInThisBundle
        case .compiled(let compiledURL, _):
            url = compiledURL
        }
        let model = try await MLModel.load(contentsOf: url, configuration: configuration)
        let loaded = try LoadedModel(model: model, name: source.displayName, computeUnits: computeUnits)
        try Classifier.warmUp(loaded)
        return loaded
    }

    /// Compiles a `.mlpackage` or `.mlmodel` picked in Files, or reuses the compiled copy cached
    /// under Application Support, keyed by the file's name and modification date.
    ///
    /// The URL comes from `.fileImporter`, outside the app's sandbox: it is readable only between
    /// `startAccessingSecurityScopedResource()` and `stopAccessingSecurityScopedResource()`. It
    /// may live in iCloud Drive or another file provider, not yet (or not fully) downloaded, so
    /// it is read through `NSFileCoordinator`, which makes the provider deliver the whole package
    /// first, and copied while coordinated; Core ML compiles the local copy.
    func compiledSource(forImportedModelAt url: URL) async throws -> Source {
        let isScoped = url.startAccessingSecurityScopedResource()
        defer {
            if isScoped {
                url.stopAccessingSecurityScopedResource()
            }
        }

        let name = url.deletingPathExtension().lastPathComponent
        let directory = try Self.cacheDirectory()
        let staging = FileManager.default.temporaryDirectory
            .appendingPathComponent(UUID().uuidString, isDirectory: true)
        defer { try? FileManager.default.removeItem(at: staging) }

        let cached = try await Self.coordinatedCopy(of: url, name: name, cacheDirectory: directory, to: staging)
        guard let local = cached.copy else {
            return .compiled(url: cached.entry, name: name)
        }
        // Compiles on a background thread; the result lands in a temporary directory.
        let compiled = try await MLModel.compileModel(at: local)
        let fileManager = FileManager.default
        if fileManager.fileExists(atPath: cached.entry.path) {
            try fileManager.removeItem(at: cached.entry)
        }
        try fileManager.moveItem(at: compiled, to: cached.entry)
        Self.removeOtherVersions(of: name, keeping: cached.entry, in: directory)
        return .compiled(url: cached.entry, name: name)
    }

    /// The cache entry for the picked file, and a local copy of it when that entry does not
    /// exist yet.
    private struct CoordinatedRead: Sendable {
        let entry: URL
        let copy: URL?
    }

    /// Reads the modification date and, on a cache miss, copies the file, all inside one
    /// coordinated read. The coordinator blocks while the provider downloads, so it runs on a
    /// dispatch queue rather than on one of Swift concurrency's few threads.
    private static func coordinatedCopy(
        of url: URL, name: String, cacheDirectory: URL, to staging: URL
    ) async throws -> CoordinatedRead {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                var coordinationError: NSError?
                var result: Result<CoordinatedRead, Error> = .failure(CocoaError(.fileReadUnknown))
                NSFileCoordinator(filePresenter: nil).coordinate(
                    readingItemAt: url, options: [], error: &coordinationError
                ) { readableURL in
                    result = Result {
                        let values = try readableURL.resourceValues(forKeys: [.contentModificationDateKey])
                        let modified = values.contentModificationDate ?? Date(timeIntervalSince1970: 0)
                        let entry = cacheDirectory.appendingPathComponent(
                            cacheKey(name: name, modified: modified), isDirectory: true)
                        if FileManager.default.fileExists(atPath: entry.path) {
                            return CoordinatedRead(entry: entry, copy: nil)
                        }
                        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
                        let copy = staging.appendingPathComponent(readableURL.lastPathComponent)
                        try FileManager.default.copyItem(at: readableURL, to: copy)
                        return CoordinatedRead(entry: entry, copy: copy)
                    }
                }
                if let coordinationError {
                    result = .failure(coordinationError)
                }
                continuation.resume(with: result.mapError {
                    ModelStoreError.cannotReadFile(url.lastPathComponent, underlying: $0)
                })
            }
        }
    }

    /// `<name>@<modification time>.mlmodelc`: a changed file gets a new entry, an unchanged one
    /// is never compiled twice.
    static func cacheKey(name: String, modified: Date) -> String {
        "\(safeFileName(name))@\(Int(modified.timeIntervalSince1970)).mlmodelc"
    }

    private static func safeFileName(_ name: String) -> String {
        let characters = name.map { character -> Character in
            character.isLetter || character.isNumber || character == "-" || character == "_"
                ? character : "_"
        }
        return String(characters)
    }

    private static func cacheDirectory() throws -> URL {
        let fileManager = FileManager.default
        let support = try fileManager.url(
            for: .applicationSupportDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        var directory = support.appendingPathComponent(cacheFolderName, isDirectory: true)
        try fileManager.createDirectory(at: directory, withIntermediateDirectories: true)
        // Compiled models can always be rebuilt from the original: keep them out of backups.
        var values = URLResourceValues()
        values.isExcludedFromBackup = true
        try directory.setResourceValues(values)
        return directory
    }

    /// Older compilations of a model with the same name are dead weight once a new one exists.
    private static func removeOtherVersions(of name: String, keeping current: URL, in directory: URL) {
        let prefix = safeFileName(name) + "@"
        let fileManager = FileManager.default
        let entries = (try? fileManager.contentsOfDirectory(
            at: directory, includingPropertiesForKeys: nil)) ?? []
        for entry in entries
        where entry.lastPathComponent.hasPrefix(prefix)
            && entry.lastPathComponent != current.lastPathComponent {
            try? fileManager.removeItem(at: entry)
        }
    }
}
