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
/// compiled on the device and cached.
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
    /// bundle and generates the `MobileNetV1` class from it.
    static let bundledModelName = String(describing: MobileNetV1.self)

    private static let cacheFolderName = "CompiledModels"

    /// Loads a model and wraps it for Vision. Throws when it is not an image classifier.
    func load(_ source: Source, computeUnits: MLComputeUnits) throws -> LoadedModel {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        switch source {
        case .bundled:
            let model = try MobileNetV1(configuration: configuration).model
            return try LoadedModel(model: model, name: Self.bundledModelName, computeUnits: computeUnits)
        case .compiled(let url, let name):
            let model = try MLModel(contentsOf: url, configuration: configuration)
            return try LoadedModel(model: model, name: name, computeUnits: computeUnits)
        }
    }

    /// Compiles a `.mlpackage` or `.mlmodel` picked in Files, or reuses the compiled copy cached
    /// under Application Support, keyed by the file's name and modification date.
    ///
    /// The URL comes from `.fileImporter`, outside the app's sandbox: it is readable only between
    /// `startAccessingSecurityScopedResource()` and `stopAccessingSecurityScopedResource()`, which
    /// spans the whole (asynchronous) compilation.
    func compiledSource(forImportedModelAt url: URL) async throws -> Source {
        let isScoped = url.startAccessingSecurityScopedResource()
        defer {
            if isScoped {
                url.stopAccessingSecurityScopedResource()
            }
        }

        let name = url.deletingPathExtension().lastPathComponent
        let modified: Date
        do {
            let values = try url.resourceValues(forKeys: [.contentModificationDateKey])
            modified = values.contentModificationDate ?? Date(timeIntervalSince1970: 0)
        } catch {
            throw ModelStoreError.cannotReadFile(url.lastPathComponent, underlying: error)
        }

        let directory = try Self.cacheDirectory()
        let cached = directory.appendingPathComponent(
            Self.cacheKey(name: name, modified: modified), isDirectory: true)
        let fileManager = FileManager.default
        if !fileManager.fileExists(atPath: cached.path) {
            // Compiles on a background thread; the result lands in a temporary directory.
            let compiled = try await MLModel.compileModel(at: url)
            if fileManager.fileExists(atPath: cached.path) {
                try fileManager.removeItem(at: cached)
            }
            try fileManager.moveItem(at: compiled, to: cached)
            Self.removeOtherVersions(of: name, keeping: cached, in: directory)
        }
        return .compiled(url: cached, name: name)
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
