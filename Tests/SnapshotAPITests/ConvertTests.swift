import SwiftProtobuf
import Testing

@testable import SnapshotAPI

/// Times from the wire: any seconds and nanos a client sends convert without trapping.
@Suite struct ConvertTests {
  @Test(arguments: [
    (Int64(-62_135_596_800), Int32(0)),  // Go's zero time, as containerd's metadata store sends it
    (.max, 999_999_999), (.min, -1), (9_223_372_036, 854_775_808), (-9_223_372_037, 0), (0, .max), (0, .min),
  ])
  func timestampsNeverTrap(_ seconds: Int64, _ nanos: Int32) {
    let t = Google_Protobuf_Timestamp(seconds: seconds, nanos: nanos)
    let n = t.unixNanos
    if seconds > 0 { #expect(n > 0) }
    if seconds < -1 { #expect(n < 0) }
  }

  @Test func timestampsRoundTrip() {
    for n: Int64 in [0, 1, -1, 1_700_000_000_123_456_789, -86_399_500_000_000, .max, .min] {
      let t = Google_Protobuf_Timestamp(unixNanos: n)
      #expect((0..<1_000_000_000).contains(t.nanos))
      #expect(t.unixNanos == n)
    }
  }
}
