import CoreGraphics
import Foundation
import ImageIO

/// A photo decoded at screen size, upright, ready for display and for Vision.
///
/// `CGImage` is not `Sendable` in every SDK the app builds with. It is immutable, and this box
/// is only made by `PhotoDownsampler` and then read, which is what makes `@unchecked` true.
struct DownsampledPhoto: @unchecked Sendable {
    let image: CGImage
}

enum PhotoDownsamplerError: LocalizedError {
    case notAnImage

    var errorDescription: String? {
        "The selected item could not be read as an image."
    }
}

/// Decodes photos with ImageIO's thumbnail path instead of `UIImage(data:)`.
///
/// A 48 MP photo decodes to about 190 MB of pixels; the model sees a few hundred pixels square
/// and the screen a couple of thousand. ImageIO decodes straight to the smaller size (for JPEG
/// and HEIC it decodes at a reduced scale), so the full-size bitmap never exists in memory.
enum PhotoDownsampler {
    /// The longest side kept: sharp on any iPhone or iPad screen, 12 times fewer pixels than a
    /// 48 MP original.
    static let maxPixelSize = 2048

    /// Runs off the main actor (a nonisolated async function): decoding takes tens of ms.
    static func downsample(_ data: Data) async throws -> DownsampledPhoto {
        // Do not cache the full-size decode; only the thumbnail is wanted.
        let sourceOptions = [kCGImageSourceShouldCache: false] as CFDictionary
        guard let source = CGImageSourceCreateWithData(data as CFData, sourceOptions) else {
            throw PhotoDownsamplerError.notAnImage
        }
        let thumbnailOptions = [
            // Always from the full image: an embedded EXIF thumbnail is tiny.
            kCGImageSourceCreateThumbnailFromImageAlways: true,
            // Applies the EXIF orientation, so the result is upright (orientation `.up`).
            kCGImageSourceCreateThumbnailWithTransform: true,
            kCGImageSourceThumbnailMaxPixelSize: maxPixelSize,
            // Decode now, here, off the main thread, not lazily when SwiftUI first draws it.
            kCGImageSourceShouldCacheImmediately: true,
        ] as [CFString: Any] as CFDictionary
        guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, thumbnailOptions) else {
            throw PhotoDownsamplerError.notAnImage
        }
        return DownsampledPhoto(image: image)
    }
}
