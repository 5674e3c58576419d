import CoreML

/// Why a model cannot be used as an image classifier.
enum ModelInfoError: LocalizedError {
    case noImageInput(model: String)
    case extraInputs(model: String, inputs: [String])
    case notAClassifier(model: String)

    var errorDescription: String? {
        switch self {
        case .noImageInput(let model):
            return "\(model) has no image input. This app runs image classifiers only."
        case .extraInputs(let model, let inputs):
            return "\(model) needs more inputs than one image (\(inputs.joined(separator: ", ")))."
        case .notAClassifier(let model):
            return "\(model) is not a classifier: it declares no class labels, so Vision cannot "
                + "return labelled results. Convert it with a ClassifierConfig."
        }
    }
}

/// What the app needs to know about a model, read from its description rather than assumed:
/// the image input Vision feeds, its size, and the class labels.
struct ModelInfo: Equatable, Sendable {
    let name: String
    let imageInputName: String
    let inputWidth: Int
    let inputHeight: Int
    let classLabels: [String]
    /// A one-line summary from the model's metadata, when it has one.
    let details: String?
    /// True when mnv1-coreml's metadata says the weights are random (the CI build uses them):
    /// the labels are then meaningless, and the screen says so.
    let hasRandomWeights: Bool

    init(name: String, description: MLModelDescription) throws {
        let inputs = description.inputDescriptionsByName
        let imageInputs = inputs.values
            .filter { $0.type == .image }
            .sorted { $0.name < $1.name }
        guard let image = imageInputs.first, let constraint = image.imageConstraint else {
            throw ModelInfoError.noImageInput(model: name)
        }
        let otherRequired = inputs.values
            .filter { $0.name != image.name && !$0.isOptional }
            .map(\.name)
            .sorted()
        guard otherRequired.isEmpty else {
            throw ModelInfoError.extraInputs(model: name, inputs: otherRequired)
        }
        let labels = (description.classLabels ?? []).map { "\($0)" }
        guard !labels.isEmpty else {
            throw ModelInfoError.notAClassifier(model: name)
        }

        let creatorDefined = description.metadata[.creatorDefinedKey] as? [String: String] ?? [:]
        self.init(
            name: name,
            imageInputName: image.name,
            inputWidth: constraint.pixelsWide,
            inputHeight: constraint.pixelsHigh,
            classLabels: labels,
            details: Self.summary(creatorDefined: creatorDefined, metadata: description.metadata),
            hasRandomWeights: creatorDefined["mnv1.weights_source"] == "random")
    }

    init(
        name: String,
        imageInputName: String,
        inputWidth: Int,
        inputHeight: Int,
        classLabels: [String],
        details: String?,
        hasRandomWeights: Bool
    ) {
        self.name = name
        self.imageInputName = imageInputName
        self.inputWidth = inputWidth
        self.inputHeight = inputHeight
        self.classLabels = classLabels
        self.details = details
        self.hasRandomWeights = hasRandomWeights
    }

    /// mnv1-coreml records how a model was made (`mnv1.*` keys); other models get their author.
    private static func summary(
        creatorDefined: [String: String],
        metadata: [MLModelMetadataKey: Any]
    ) -> String? {
        var parts: [String] = []
        if let alpha = creatorDefined["mnv1.alpha"] {
            parts.append("alpha \(alpha)")
        }
        if let source = creatorDefined["mnv1.weights_source"] {
            parts.append("\(source) weights")
        }
        if let precision = creatorDefined["mnv1.precision"] {
            parts.append(precision)
        }
        if parts.isEmpty, let author = metadata[.author] as? String, !author.isEmpty {
            parts.append(author)
        }
        return parts.isEmpty ? nil : parts.joined(separator: " · ")
    }
}
