// CImageCodecs: PNG / JPEG / WebP conversion on top of the system libpng16 and
// libjpeg(-turbo); libwebp is loaded at run time (dlopen) so no -dev package is needed.
// Every function is thread-safe and reports failure only through its return value.
#ifndef CIMAGECODECS_H
#define CIMAGECODECS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    NG_FORMAT_UNKNOWN = 0,
    NG_FORMAT_PNG = 1,
    NG_FORMAT_JPEG = 2,
    NG_FORMAT_WEBP = 3
} ng_format;

// Negative return codes of ng_dimensions / ng_convert (0 is success).
enum {
    NG_ERR_INVALID_ARGUMENT = -1, // NULL pointer, bad target or quality
    NG_ERR_UNSUPPORTED = -2,      // unknown input format, CMYK JPEG, animated WebP...
    NG_ERR_TOO_LARGE = -3,        // width/height 0 or > 20000, or > 200 megapixels
    NG_ERR_DECODE = -4,           // corrupt or truncated input
    NG_ERR_ENCODE = -5,           // the encoder failed
    NG_ERR_NO_MEMORY = -6,
    NG_ERR_WEBP_UNAVAILABLE = -7  // libwebp.so.7 could not be loaded
};

// Output of ng_convert; release with ng_buffer_free.
typedef struct {
    uint8_t *data;
    size_t size;
} ng_buffer;

// Frees buffer->data and zeroes the struct. NULL-safe and idempotent.
void ng_buffer_free(ng_buffer *buffer);

// Identifies the format from the magic bytes.
ng_format ng_sniff(const uint8_t *bytes, size_t size);

// Reads width and height from the header only (no size limits applied here).
// 0 on success, negative NG_ERR_* on error.
int ng_dimensions(const uint8_t *bytes, size_t size, int *width, int *height);

// Decodes `bytes` (PNG, JPEG or WebP) and encodes it as `target`.
// quality 0..100 applies to JPEG and lossy WebP, -1 means the default (90);
// WebP quality 100 is lossless. PNG and WebP keep alpha; JPEG composites it on white.
// Returns 0 and fills *out, or a negative NG_ERR_* code with a short reason in errbuf.
int ng_convert(const uint8_t *bytes, size_t size, ng_format target, int quality,
               ng_buffer *out, char *errbuf, size_t errlen);

// 1 if WebP encoding is available (libwebp loaded), else 0.
int ng_webp_available(void);

#ifdef __cplusplus
}
#endif

#endif
