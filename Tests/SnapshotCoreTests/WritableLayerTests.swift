import Testing

@testable import SnapshotCore

/// The labels that shape a writable layer: its size limit and volatility.
@Suite struct WritableLayerTests {
  @Test func sizesParse() {
    #expect(WritableLimit.parse("10G") == 10 << 30)
    #expect(WritableLimit.parse("10Gi") == 10 << 30)
    #expect(WritableLimit.parse("10gb") == 10 << 30)
    #expect(WritableLimit.parse("512M") == 512 << 20)
    #expect(WritableLimit.parse("1T") == 1 << 40)
    #expect(WritableLimit.parse("64K") == 64 << 10)
    #expect(WritableLimit.parse("1048576") == 1 << 20)
    #expect(WritableLimit.parse("0") == 0)
    for bad in ["", "G", "-1G", "1.5G", "10 G", "ten", "8E", "99999999999999999999", "9999999999T", "１G"] {
      #expect(WritableLimit.parse(bad) == nil, "\(bad)")
    }
  }

  @Test func limitsFromLabels() throws {
    let label = WritableLimit.label
    #expect(try WritableLimit.wanted([:], byDefault: 0) == 0)
    #expect(try WritableLimit.wanted([:], byDefault: 1 << 30) == 1 << 30)
    #expect(try WritableLimit.wanted([label: "0"], byDefault: 1 << 30) == 0)
    #expect(try WritableLimit.wanted([label: "16M"], byDefault: 0) == 16 << 20)
    for bad in ["15M", "16T", "lots", ""] {
      #expect(throws: SnapshotError.self, "\(bad)") { try WritableLimit.wanted([label: bad], byDefault: 0) }
    }
  }

  @Test func imagesLeaveTheLimitFree() {
    for limit: Int64 in [16 << 20, 1 << 30, 10 << 30, 100 << 30, 15 << 40] {
      let size = WritableLimit.imageSize(limit)
      #expect(size > limit + (4 << 20))
      #expect(size < 16 << 40)  // one ext4 file
    }
  }

  @Test func volatileFromLabels() throws {
    let label = Volatile.label
    #expect(try Volatile.wanted([:], byDefault: false) == false)
    #expect(try Volatile.wanted([:], byDefault: true) == true)
    for on in ["", "true", "TRUE", "1", "yes", "on"] { #expect(try Volatile.wanted([label: on], byDefault: false), "\(on)") }
    for off in ["false", "0", "no", "off"] { #expect(try !Volatile.wanted([label: off], byDefault: true), "\(off)") }
    #expect(throws: SnapshotError.self) { try Volatile.wanted([label: "maybe"], byDefault: false) }
  }
}
