import Testing

@testable import SnapshotSys

@Suite struct MountInfoTests {
  @Test func parsesEveryField() throws {
    let text = """
      22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
      36 22 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue
      41 22 0:45 / /run/c/a\\040b rw - overlay overlay rw,lowerdir=/x/l/2:/x/l/1::/x/o,upperdir=/x/s/3/fs,workdir=/x/s/3/work

      """
    let mounts = MountInfo.parse(text)
    #expect(mounts.count == 3)
    #expect(
      mounts[0]
        == MountInfo(
          id: 22, parent: 1, major: 8, minor: 1, root: "/", mountPoint: "/", options: ["rw", "relatime"],
          optionalFields: ["shared:1"], fsType: "ext4", source: "/dev/sda1", superOptions: ["rw", "errors=remount-ro"]))
    #expect(mounts[1].root == "/mnt1")
    #expect(mounts[1].mountPoint == "/mnt2")
    #expect(mounts[1].optionalFields == ["master:1", "shared:7"])
    #expect(mounts[1].major == 98 && mounts[1].minor == 0)
    #expect(mounts[2].mountPoint == "/run/c/a b")
    #expect(mounts[2].optionalFields.isEmpty)
    #expect(mounts[2].fsType == "overlay")
    #expect(mounts[2].superOptions == ["rw", "lowerdir=/x/l/2:/x/l/1::/x/o", "upperdir=/x/s/3/fs", "workdir=/x/s/3/work"])
  }

  @Test func decodesOctalEscapes() {
    #expect(MountInfo.unescape("/a\\040b\\011c\\012d\\134e") == "/a b\tc\nd\\e")
    #expect(MountInfo.unescape("/plain") == "/plain")
    // Not an escape: left as it is.
    #expect(MountInfo.unescape("/a\\9b\\04") == "/a\\9b\\04")
  }

  @Test func skipsMalformedLines() {
    #expect(MountInfo.parse("garbage\n1 2 3\n22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw\n").isEmpty)
  }

  @Test func readsThisProcessesMounts() throws {
    let mounts = try MountInfo.current()
    #expect(mounts.contains { $0.mountPoint == "/" })
  }
}
