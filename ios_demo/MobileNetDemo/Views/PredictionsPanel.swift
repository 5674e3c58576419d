import SwiftUI

/// The panel over the preview: which model runs, its latency and FPS, and the top-5 labels with
/// confidence bars.
@MainActor
struct PredictionsPanel: View {
    let status: AppModel.ModelStatus
    let predictions: [Prediction]
    let latencyMs: Double?
    /// Nil for a still photo, where frames per second means nothing.
    let framesPerSecond: Double?
    let error: String?
    let hint: String

    var body: some View {
        VStack(alignment: .leading, spacing: 10) {
            header
            switch status {
            case .loading(let name):
                HStack(spacing: 8) {
                    ProgressView()
                    Text("Loading \(name)…")
                }
            case .failed(let message):
                Label(message, systemImage: "exclamationmark.triangle.fill")
                    .foregroundStyle(.yellow)
            case .ready(let info):
                if info.hasRandomWeights {
                    Label(
                        "Random weights: the labels are meaningless. Convert real weights "
                            + "(ImageNet or your own checkpoint) to see real predictions.",
                        systemImage: "dice")
                        .font(.caption)
                        .foregroundStyle(.orange)
                }
                if let error {
                    Label(error, systemImage: "exclamationmark.triangle.fill")
                        .font(.caption)
                        .foregroundStyle(.yellow)
                }
                if predictions.isEmpty {
                    Text(hint)
                        .foregroundStyle(.secondary)
                } else {
                    ForEach(predictions) { prediction in
                        PredictionRow(prediction: prediction)
                    }
                }
            }
        }
        .padding(14)
        .frame(maxWidth: 560, alignment: .leading)
        .background(.ultraThinMaterial, in: RoundedRectangle(cornerRadius: 16))
        // No animation of the list: it changes about ten times a second, and sliding rows
        // would make the labels harder to read, not easier.
    }

    private var header: some View {
        HStack(alignment: .firstTextBaseline) {
            VStack(alignment: .leading, spacing: 2) {
                Text(title)
                    .font(.headline)
                if let subtitle {
                    Text(subtitle)
                        .font(.caption)
                        .foregroundStyle(.secondary)
                }
            }
            Spacer(minLength: 8)
            VStack(alignment: .trailing, spacing: 2) {
                if let latencyMs {
                    Text("\(latencyMs.formatted(.number.precision(.fractionLength(1)))) ms")
                }
                if let framesPerSecond {
                    Text("\(framesPerSecond.formatted(.number.precision(.fractionLength(1)))) FPS")
                }
            }
            .font(.caption.monospacedDigit())
            .accessibilityElement(children: .combine)
        }
    }

    private var title: String {
        switch status {
        case .loading(let name): return name
        case .failed: return "No model"
        case .ready(let info): return info.name
        }
    }

    /// Input size and class count as the model describes them, plus how it was made.
    private var subtitle: String? {
        guard case .ready(let info) = status else { return nil }
        let shape = "\(info.inputWidth)×\(info.inputHeight) · \(info.classLabels.count) classes"
        guard let details = info.details else { return shape }
        return "\(shape) · \(details)"
    }
}

/// One label, its probability and a bar as long as the probability.
@MainActor
struct PredictionRow: View {
    let prediction: Prediction

    var body: some View {
        VStack(alignment: .leading, spacing: 4) {
            HStack {
                Text(prediction.label)
                    .lineLimit(1)
                Spacer(minLength: 8)
                Text(prediction.confidence.formatted(.percent.precision(.fractionLength(1))))
                    .monospacedDigit()
            }
            .font(.subheadline)
            ConfidenceBar(value: prediction.confidence)
        }
        .accessibilityElement(children: .combine)
    }
}

@MainActor
struct ConfidenceBar: View {
    let value: Double

    var body: some View {
        GeometryReader { geometry in
            ZStack(alignment: .leading) {
                Capsule()
                    .fill(.white.opacity(0.15))
                Capsule()
                    .fill(Color.accentColor)
                    .frame(width: geometry.size.width * min(max(value, 0), 1))
            }
        }
        .frame(height: 6)
        .accessibilityHidden(true)
    }
}

#Preview("Top 5") {
    PredictionsPanel(
        status: .ready(ModelInfo(
            name: "FlowerClassifier",
            imageInputName: "image",
            inputWidth: 224,
            inputHeight: 224,
            classLabels: ["daisy", "dandelion", "rose", "sunflower", "tulip", "iris", "lily"],
            details: "alpha 0.5 · your weights · fp16",
            hasRandomWeights: false)),
        predictions: [
            Prediction(label: "sunflower", confidence: 0.71),
            Prediction(label: "daisy", confidence: 0.12),
            Prediction(label: "dandelion", confidence: 0.06),
            Prediction(label: "tulip", confidence: 0.03),
            Prediction(label: "rose", confidence: 0.02),
        ],
        latencyMs: 4.2,
        framesPerSecond: 29.7,
        error: nil,
        hint: "Point the camera at an object.")
        .padding()
        .background(.black)
        .preferredColorScheme(.dark)
}
