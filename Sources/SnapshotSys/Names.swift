import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// overlayfs's own extended attributes, in the namespace a mount uses: `trusted.overlay.*`,
/// or `user.overlay.*` on one with `userxattr`. The layer store writes them, snapfs reads
/// them as overlayfs does.
public struct OverlayXattr: Sendable {
  /// `trusted.overlay.` or `user.overlay.`: every name of the namespace begins so.
  public let prefix: String
  /// "y" on a directory hides what the layers below have under its name.
  public let opaque: String
  /// On a regular file whose data is another file's (a stub).
  public let metacopy: String
  /// Where a metacopy file's data is (or a renamed directory's origin).
  public let redirect: String

  init(prefix: String) {
    self.prefix = prefix
    opaque = prefix + "opaque"
    metacopy = prefix + "metacopy"
    redirect = prefix + "redirect"
  }

  /// `trusted.overlay.*`: what overlayfs reads by default, and what the layer store writes.
  public static let trusted = OverlayXattr(prefix: "trusted.overlay.")
  /// `user.overlay.*`: what overlayfs reads with `userxattr`.
  public static let user = OverlayXattr(prefix: "user.overlay.")

  /// Whether `name` is in either namespace.
  public static func isOverlay(_ name: String) -> Bool {
    name.hasPrefix(trusted.prefix) || name.hasPrefix(user.prefix)
  }
}

private let temporaryCounter = Atomic<UInt64>(0)

extension Sys {
  /// A name for a file or directory that lives only until it is renamed or removed, unique
  /// in this process and among processes: `<prefix>-<pid>-<n>`.
  public static func temporaryName(_ prefix: String) -> String {
    let n = temporaryCounter.add(1, ordering: .relaxed).newValue
    return "\(prefix)-\(getpid())-\(n)"
  }
}
