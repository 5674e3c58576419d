import Foundation

/// Steadies the live top 5: probabilities averaged over the last few frames, and the list shown
/// at most about ten times a second.
///
/// Raw per-frame results flicker: two close labels swap places from one frame to the next, and
/// a list redrawn 30 times a second cannot be read. An exponential moving average per label
/// (a label missing from a frame counts as 0 there) keeps a label's place unless it really
/// changes; publishing at 10 Hz keeps the text still long enough to read.
struct PredictionSmoother {
    /// Weight of the newest frame: 0.35 gives roughly the last 3 to 5 frames most of the say.
    var newestWeight = 0.35
    /// Labels whose average falls below this are forgotten.
    var floor = 0.001
    var shownCount = 5
    var publishInterval: Duration = .milliseconds(100)

    private var averages: [String: Double] = [:]
    private var lastPublished: ContinuousClock.Instant?

    /// Adds one frame's predictions. Returns the smoothed top list when it is time to show it
    /// (the first frame, then every `publishInterval`), nil otherwise.
    mutating func add(
        _ predictions: [Prediction], at now: ContinuousClock.Instant = .now
    ) -> [Prediction]? {
        let fresh = Dictionary(predictions.map { ($0.label, $0.confidence) }, uniquingKeysWith: max)
        for label in Set(averages.keys).union(fresh.keys) {
            let old = averages[label] ?? 0
            let value = old + newestWeight * ((fresh[label] ?? 0) - old)
            averages[label] = value < floor ? nil : value
        }
        if let last = lastPublished, last.duration(to: now) < publishInterval {
            return nil
        }
        lastPublished = now
        return top
    }

    /// The smoothed list, best first; ties broken by label so that the order is stable.
    var top: [Prediction] {
        averages
            .sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .prefix(shownCount)
            .map { Prediction(label: $0.key, confidence: $0.value) }
    }

    /// Forgets everything: a new model, a photo, or the camera again after a pause.
    mutating func reset() {
        averages = [:]
        lastPublished = nil
    }
}
