import CoreML

/// The choices of the compute-unit picker, in the order it lists them.
///
/// Changing the choice reloads the model with a new `MLModelConfiguration`: Core ML fixes the
/// compute units when a model is loaded.
enum ComputeUnitsOption: String, CaseIterable, Identifiable, Sendable {
    case all
    case cpuAndNeuralEngine
    case cpuAndGPU
    case cpuOnly

    var id: Self { self }

    var title: String {
        switch self {
        case .all: return "All"
        case .cpuAndNeuralEngine: return "CPU + Neural Engine"
        case .cpuAndGPU: return "CPU + GPU"
        case .cpuOnly: return "CPU only"
        }
    }

    /// A label short enough for the control bar.
    var shortTitle: String {
        switch self {
        case .all: return "All"
        case .cpuAndNeuralEngine: return "CPU+ANE"
        case .cpuAndGPU: return "CPU+GPU"
        case .cpuOnly: return "CPU"
        }
    }

    var mlComputeUnits: MLComputeUnits {
        switch self {
        case .all: return .all
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuOnly: return .cpuOnly
        }
    }
}
