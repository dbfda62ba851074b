// SHA-256 with the x86 SHA extensions (see CSha256.h). The round structure is Intel's
// published one (sha256rnds2 two rounds at a time, sha256msg1/msg2 for the schedule);
// tested against swift-crypto in HasherTests.
#include "CSha256.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

int csha256_accelerated(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  if (!(c & bit_SSSE3) || !(c & bit_SSE4_1)) return 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  return (b & bit_SHA) != 0;
}

#define TARGET __attribute__((target("sha,sse4.1,ssse3")))

// The state as sha256rnds2 wants it: ABEF and CDGH.
TARGET static inline void load(const uint32_t s[8], __m128i *abef, __m128i *cdgh) {
  __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[0]), 0xB1);
  __m128i hgfe = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&s[4]), 0x1B);
  *abef = _mm_alignr_epi8(dcba, hgfe, 8);
  *cdgh = _mm_blend_epi16(hgfe, dcba, 0xF0);
}

TARGET static inline void store(uint32_t s[8], __m128i abef, __m128i cdgh) {
  __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
  __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
  _mm_storeu_si128((__m128i *)&s[0], _mm_blend_epi16(feba, dchg, 0xF0));
  _mm_storeu_si128((__m128i *)&s[4], _mm_alignr_epi8(dchg, feba, 8));
}

// Four rounds (group i) of one stream, message words W.
#define ROUNDS4(S0, S1, W, i)                                                      \
  do {                                                                             \
    __m128i m_ = _mm_add_epi32(W, _mm_loadu_si128((const __m128i *)&K[4 * (i)])); \
    S1 = _mm_sha256rnds2_epu32(S1, S0, m_);                                        \
    S0 = _mm_sha256rnds2_epu32(S0, S1, _mm_shuffle_epi32(m_, 0x0E));               \
  } while (0)

// Message words of group i (4 to 15) from the four before, kept in W[i % 4].
#define SCHEDULE(W, i)                                                                              \
  (W[(i) & 3] = _mm_sha256msg2_epu32(                                                               \
       _mm_add_epi32(_mm_sha256msg1_epu32(W[(i) & 3], W[((i) + 1) & 3]),                            \
                     _mm_alignr_epi8(W[((i) + 3) & 3], W[((i) + 2) & 3], 4)),                       \
       W[((i) + 3) & 3]))

#define LOAD(W, data, i) \
  (W[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((data) + 16 * (i))), byteswap))

TARGET void csha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks) {
  const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i s0, s1;
  load(state, &s0, &s1);
  for (; blocks > 0; blocks--, data += 64) {
    __m128i k0 = s0, k1 = s1, w[4];
    // (Unrolled: with the schedule in registers this runs at BoringSSL's speed; a loop
    // keeps w[] in memory and is a fifth slower.)
    _Pragma("unroll") for (int i = 0; i < 4; i++) {
      LOAD(w, data, i);
      ROUNDS4(s0, s1, w[i], i);
    }
    _Pragma("unroll") for (int i = 4; i < 16; i++) {
      SCHEDULE(w, i);
      ROUNDS4(s0, s1, w[i & 3], i);
    }
    s0 = _mm_add_epi32(s0, k0);
    s1 = _mm_add_epi32(s1, k1);
  }
  store(state, s0, s1);
}

TARGET void csha256_blocks2(uint32_t state_a[8], const uint8_t *data_a, uint32_t state_b[8], const uint8_t *data_b,
                            size_t blocks) {
  const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
  __m128i a0, a1, b0, b1;
  load(state_a, &a0, &a1);
  load(state_b, &b0, &b1);
  for (; blocks > 0; blocks--, data_a += 64, data_b += 64) {
    __m128i ka0 = a0, ka1 = a1, kb0 = b0, kb1 = b1, wa[4], wb[4];
    _Pragma("unroll") for (int i = 0; i < 4; i++) {
      LOAD(wa, data_a, i);
      LOAD(wb, data_b, i);
      ROUNDS4(a0, a1, wa[i], i);
      ROUNDS4(b0, b1, wb[i], i);
    }
    _Pragma("unroll") for (int i = 4; i < 16; i++) {
      SCHEDULE(wa, i);
      SCHEDULE(wb, i);
      ROUNDS4(a0, a1, wa[i & 3], i);
      ROUNDS4(b0, b1, wb[i & 3], i);
    }
    a0 = _mm_add_epi32(a0, ka0);
    a1 = _mm_add_epi32(a1, ka1);
    b0 = _mm_add_epi32(b0, kb0);
    b1 = _mm_add_epi32(b1, kb1);
  }
  store(state_a, a0, a1);
  store(state_b, b0, b1);
}

#else  // another architecture: no SHA extensions of this kind; Hasher uses swift-crypto.

int csha256_accelerated(void) { return 0; }

void csha256_blocks(uint32_t state[8], const uint8_t *data, size_t blocks) {
  (void)state, (void)data, (void)blocks;
  __builtin_trap();  // never called where csha256_accelerated() is 0
}

void csha256_blocks2(uint32_t state_a[8], const uint8_t *data_a, uint32_t state_b[8], const uint8_t *data_b,
                     size_t blocks) {
  (void)state_a, (void)data_a, (void)state_b, (void)data_b, (void)blocks;
  __builtin_trap();
}

#endif
