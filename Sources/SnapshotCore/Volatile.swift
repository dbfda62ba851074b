import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Volatile active snapshots: mounted with overlayfs's `volatile` (snapfs: fsync and
/// fsyncdir return at once), for throwaway containers whose writes need not survive a
/// crash. Asked for by the label nydus-snapshotter honours, or by default
/// (`snapshotd --volatile`); a label of "false" opts a snapshot out of the default.
///
/// The kernel's rule: a volatile mount leaves `incompat/volatile` in its work dir, and
/// refuses to mount that work dir again while it is there, because after a crash its upper
/// may have lost writes it acknowledged. Only userspace knows whether the host crashed.
/// Here: each volatile snapshot has a mark in /run (`Layout.volatileMark`), made at
/// Prepare, which a restart of the host empties. With its mark, a snapshot's mounts are
/// handed out again after the kernel's leftover is removed (a container that stops and
/// starts again, a daemon restarted); without it the host restarted since, and Mounts and
/// Commit refuse the snapshot and `check` reports it; it is never reused as if intact.
enum Volatile {
  static let label = "containerd.io/snapshot/overlay.volatile"

  /// Whether a snapshot prepared with `labels` is volatile.
  static func wanted(_ labels: [String: String], byDefault: Bool) throws(SnapshotError) -> Bool {
    guard let value = labels[label] else { return byDefault }
    switch value.lowercased() {
    case "", "true", "1", "yes", "on": return true
    case "false", "0", "no", "off": return false
    default: throw .invalid("label \(label)=\(quoted(value)): expected true or false")
    }
  }

  /// Records that snapshot `id` is volatile and the host has not restarted since.
  static func mark(_ layout: Layout, _ id: Int64) throws(SystemError) {
    try Sys.mkdirAll(layout.volatileMarks, mode: 0o700)
    let dir = try At.openDirectory(layout.volatileMarks)
    defer { close(dir) }
    close(try At.open(dir, String(id), flags: O_WRONLY | O_CREAT, mode: 0o600))
  }

  /// Whether the host has run without a restart since snapshot `id` was prepared.
  static func intact(_ layout: Layout, _ id: Int64) -> Bool { Sys.exists(layout.volatileMark(id)) }

  /// Readies a volatile snapshot's work dir for another mount: fails if the host restarted
  /// since it was prepared, else removes the kernel's `incompat` directory.
  static func readyToMount(_ layout: Layout, _ id: Int64, key: String, limited: Bool) throws(SnapshotError) {
    guard intact(layout, id) else { throw untrusted(key) }
    do { try Tree.remove(layout.volatileIncompat(id, limited: limited)) } catch {
      throw .internal("cannot ready volatile snapshot \(quoted(key)) for another mount: \(error)")
    }
  }

  static func untrusted(_ key: String) -> SnapshotError {
    .precondition(
      "volatile snapshot \(quoted(key)) cannot be trusted: the host restarted since it was prepared, and writes its mounts acknowledged may be lost; remove it"
    )
  }

  /// Forgets snapshot `id`'s mark (it was removed).
  static func unmark(_ layout: Layout, _ id: Int64) { try? Sys.unlink(layout.volatileMark(id)) }
}
