/// How a layer blob is compressed, from its media type (OCI image-spec and Docker's).
public enum Compression: String, Sendable {
  case none, gzip, zstd
  /// Docker's `rootfs.diff.tar`: "may have been compressed but failed to use the correct
  /// media type" (containerd's `images.DiffCompression` calls it unknown); the blob's first
  /// bytes tell (gzip's or zstd's magic, else a plain tar).
  case detect

  /// The layer media types we unpack. Anything else (encrypted layers, foreign formats)
  /// is refused by name.
  public init?(mediaType: String) {
    switch mediaType {
    case "application/vnd.oci.image.layer.v1.tar",
      "application/vnd.oci.image.layer.nondistributable.v1.tar":
      self = .none
    case "application/vnd.oci.image.layer.v1.tar+gzip",
      "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
      "application/vnd.docker.image.rootfs.diff.tar.gzip",
      "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip":
      self = .gzip
    case "application/vnd.oci.image.layer.v1.tar+zstd",
      "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd":
      self = .zstd
    case "application/vnd.docker.image.rootfs.diff.tar",
      "application/vnd.docker.image.rootfs.foreign.diff.tar":
      self = .detect
    default:
      return nil
    }
  }
}

/// Why an import failed. `SnapshotCore` maps it to its own error kinds (and so to gRPC
/// codes) in one place, as it does the `SystemError`s the rest of the layer store throws.
public struct LayerError: Error, CustomStringConvertible, Sendable {
  public enum Kind: Sendable {
    /// The input is malformed, hostile or does not match its digests.
    case invalid
    /// Anything else: an I/O error (with its `errno`), a bug.
    case failed
    /// The client cancelled, or left, before the work was done.
    case cancelled
  }

  public let kind: Kind
  public let message: String
  /// The errno of the system call that failed, when one did (a full file system is ENOSPC
  /// or EDQUOT).
  public let errno: Int32?

  public init(_ kind: Kind, _ message: String, errno: Int32? = nil) {
    self.kind = kind
    self.message = message
    self.errno = errno
  }

  public var description: String { message }
}
