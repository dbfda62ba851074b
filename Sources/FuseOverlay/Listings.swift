import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// The merged listings of directories being read, and the offsets that resume them.
///
/// snapfs answers OPENDIR with ENOSYS, so the kernel opens and closes directories without a
/// request and keeps their listings in its cache (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR, its
/// default then); a warm walk costs no round trip. A READDIR then names only a directory
/// and an offset, no open directory, so an offset must make sense in any listing of the
/// directory: as ext4's do, offsets are hashes of names. A listing is sorted by its names'
/// hashes (made unique: a tie takes the next value), an entry's offset is the next entry's
/// hash, and a read resumes at the first entry whose hash is at least the offset. A reader
/// that resumes in a newer listing than the one it began with (the directory changed
/// meanwhile) so never sees a name twice nor misses one that stayed.
///
/// Offsets 1 and 2 resume at ".." and at the first name; names hash above 2.
///
/// One listing per directory is kept between the READDIRs of a read that does not fit one
/// reply: taken again at offset 0, dropped once its last entry is sent, and at most
/// `limit` of those never read to the end are kept (the oldest go first; a read that
/// continues one takes it again).
final class Listings: @unchecked Sendable {
  struct Listing {
    let entries: [Overlay.Entry]
    /// The hash of each entry's name, ascending, each above 2.
    let keys: [off_t]

    init(_ unsorted: [Overlay.Entry]) {
      // Ties (two names of one hash) in byte order: a String's `<` would take two
      // spellings of one Unicode name (NFC, NFD), which are two names here, as equal.
      let hashed = unsorted.map { (Listings.hash($0.name), $0) }.sorted {
        $0.0 < $1.0 || ($0.0 == $1.0 && $0.1.name.utf8.lexicographicallyPrecedes($1.1.name.utf8))
      }
      var keys = [off_t]()
      keys.reserveCapacity(hashed.count)
      for (h, _) in hashed { keys.append(max(h, (keys.last ?? 2) + 1)) }
      self.entries = hashed.map(\.1)
      self.keys = keys
    }

    /// The index of the first entry at or after `offset` (an offset above 2).
    func index(of offset: off_t) -> Int {
      var low = 0
      var high = keys.count
      while low < high {
        let mid = (low + high) / 2
        if keys[mid] < offset { low = mid + 1 } else { high = mid }
      }
      return low
    }

    /// The offset that resumes after entry `index`: the next entry's, or past the end.
    func offset(after index: Int) -> off_t { index + 1 < keys.count ? keys[index + 1] : off_t.max }
  }

  private let mutex = Lock()
  /// The node is held weakly: a kept listing must not keep a forgotten or removed
  /// directory (and its descriptors) alive.
  private struct Kept {
    weak var node: Node?
    let listing: Listing
    var age: UInt64
  }
  private var lists: [ObjectIdentifier: Kept] = [:]
  private var clock: UInt64 = 0
  static let limit = 64

  /// A name's offset: a hash of its bytes (stable while the process runs) above 2, below
  /// `off_t.max`.
  static func hash(_ name: String) -> off_t {
    var h = Hasher()
    var name = name
    name.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    return off_t(UInt64(UInt(bitPattern: h.finalize())) >> 2) + 3
  }

  /// The kept listing of `node`, if any (now the newest: a directory being read is not the
  /// one to drop).
  func find(_ node: Node) -> Listing? {
    mutex.withLock {
      let key = ObjectIdentifier(node)
      guard let kept = lists[key], kept.node === node else { return nil }
      clock += 1
      lists[key]?.age = clock
      return kept.listing
    }
  }

  /// Keeps `listing` as `node`'s (in place of any other).
  func keep(_ node: Node, _ listing: Listing) {
    mutex.withLock {
      clock += 1
      lists[ObjectIdentifier(node)] = Kept(node: node, listing: listing, age: clock)
      if lists.count > Self.limit, let oldest = lists.min(by: { $0.value.age < $1.value.age })?.key {
        lists[oldest] = nil
      }
    }
  }

  /// `node`'s listing was read to the end.
  func finish(_ node: Node) {
    mutex.withLock {
      if lists[ObjectIdentifier(node)]?.node === node { lists[ObjectIdentifier(node)] = nil }
    }
  }
}
