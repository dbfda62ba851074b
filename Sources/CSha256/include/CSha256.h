// SHA-256 block functions on the x86 SHA extensions, one stream or two at once.
//
// Why not only swift-crypto (BoringSSL): it hashes one stream at a time. An unpack hashes
// two streams over the same bytes, the tar stream (the diffID) and each file in it (the
// object's name); each SHA-NI round waits on the one before, so two independent streams
// interleaved fill the gaps: 2.65-2.95 GB/s for the pair against 1.78 GB/s for one stream on
// this project's machines (AMD EPYC; OpenSSL's own code also does 1.78): scripts/bench-sha256.
// Where the CPU lacks the extensions, `Hasher` keeps using swift-crypto.
#ifndef SNAPSHOTD_CSHA256_H
#define SNAPSHOTD_CSHA256_H
#include <stddef.h>
#include <stdint.h>

/// Whether this CPU has the SHA extensions (and the SSSE3 and SSE4.1 the functions use).
int csha256_accelerated(void);

/// Runs the SHA-256 compression over `blocks` 64-byte blocks of `data` into `state` (the
/// eight words H0..H7). Only where `csha256_accelerated()`.
void csha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks);

/// The same for two independent streams at once, `blocks` blocks of each.
void csha256_blocks2(uint32_t state_a[8], const uint8_t *data_a, uint32_t state_b[8], const uint8_t *data_b,
                     size_t blocks);

#endif
