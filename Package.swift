// swift-tools-version:6.1
// snapshotd: a layered filesystem snapshotter service for containerd.
//
// Dependencies point one way:
//   CSysShims, CArchive, CIsal (C) → SnapshotSys (system calls) → LayerStore (layer unpacking,
//   content objects, OCI formats) → SnapshotCore (metadata, layout, mounts, imports)
//     → SnapshotAPI (gRPC, generated code) → executables (snapshotd, snapctl)
//   SnapshotSys, CFuse (libfuse3), CFuseIO (passthrough hooks) → SnapFS (the FUSE overlay file system) → snapfs
//   LayerStore → Registry (OCI distribution client: async-http-client, hosts.toml, auth)
//   Registry, SnapshotCore → Pull (layers containerd's CRI names, fetched on Prepare) → snapshotd
//   Benchmarks/snapbench times the core in-process; Tests/fuzz (snapfuzz) fuzzes the parsers.
// The core never imports gRPC.
import PackageDescription

let package = Package(
  name: "snapshotd",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "snapshotd", targets: ["snapshotd"]),
    .executable(name: "snapctl", targets: ["snapctl"]),
    .executable(name: "snapbench", targets: ["snapbench"]),
    .executable(name: "snapfs", targets: ["snapfs"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
  ],
  targets: [
    .target(name: "CSysShims", path: "Sources/CSysShims"),
    .target(name: "CFuseIO"),
    .systemLibrary(
      name: "CArchive",
      path: "Sources/CArchive",
      pkgConfig: "libarchive",
      providers: [.apt(["libarchive-dev"])]
    ),
    .systemLibrary(
      name: "CIsal",
      path: "Sources/CIsal",
      pkgConfig: "libisal",
      providers: [.apt(["libisal-dev"])]
    ),
    .systemLibrary(
      name: "CFuse",
      path: "Sources/CFuse",
      pkgConfig: "fuse3",
      providers: [.apt(["libfuse3-dev"])]
    ),
    .target(
      name: "SnapFS",
      dependencies: ["CSysShims", "CFuse", "CFuseIO", "SnapshotSys"]
    ),
    .executableTarget(
      name: "snapfs",
      dependencies: ["SnapFS"]
    ),
    .target(
      name: "SnapshotSys",
      dependencies: ["CSysShims"],
      path: "Sources/SnapshotSys"
    ),
    .target(
      name: "LayerStore",
      dependencies: [
        "SnapshotSys", "CArchive", "CIsal",
        .product(name: "Crypto", package: "swift-crypto"),
      ]
    ),
    .target(
      name: "Registry",
      dependencies: [
        "LayerStore", "SnapshotSys",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ]
    ),
    .target(
      name: "Pull",
      dependencies: [
        "Registry", "SnapshotCore", "LayerStore", "SnapshotSys",
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .executableTarget(
      name: "registry-probe",
      dependencies: [
        "Registry", "LayerStore",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Tests/registry-probe"
    ),
    .target(
      name: "SnapshotCore",
      dependencies: [
        "SnapshotSys", "LayerStore",
        .product(name: "GRDB", package: "GRDB.swift"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    .target(
      name: "SnapshotAPI",
      dependencies: [
        "SnapshotCore", "LayerStore", "SnapshotSys",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
      ]
    ),
    .executableTarget(
      name: "snapshotd",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys", "Pull", "Registry",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
      ]
    ),
    .executableTarget(
      name: "snapctl",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .executableTarget(
      name: "snapbench",
      dependencies: [
        "SnapshotCore",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Benchmarks/snapbench"
    ),
    // Coverage-guided fuzzing of the parsers of untrusted input (scripts/fuzz); in the
    // ordinary build it replays the corpora (scripts/test).
    .executableTarget(
      name: "snapfuzz",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "LayerStore", "Registry", "SnapFS", "SnapshotSys", "CSysShims",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      path: "Tests/fuzz",
      exclude: ["corpus"]
    ),
    .testTarget(
      name: "SnapshotSysTests",
      dependencies: ["SnapshotSys"]
    ),
    .testTarget(
      name: "SnapFSTests",
      dependencies: ["SnapFS", "CSysShims", "SnapshotSys"]
    ),
    .testTarget(
      name: "LayerStoreTests",
      dependencies: ["LayerStore", "SnapshotSys"]
    ),
    .testTarget(
      name: "RegistryTests",
      dependencies: ["Registry", "LayerStore", .product(name: "NIOCore", package: "swift-nio")]
    ),
    .testTarget(
      name: "SnapshotCoreTests",
      dependencies: ["SnapshotCore", "SnapshotSys", "LayerStore"]
    ),
    .testTarget(
      name: "SnapshotAPITests",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]
    ),
  ]
)
