// PNG / JPEG / WebP conversion. See include/CImageCodecs.h for the contract.
//
// Every decoder produces the same 8-bit RGB or RGBA raster and every encoder
// consumes it. libpng is used through its simplified API (no setjmp needed);
// libjpeg's setjmp/longjmp error handling never leaves this file; libwebp is
// dlopen'ed because only its runtime library is installed.

#include "CImageCodecs.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h> // before jpeglib.h, which uses FILE
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

#define NG_MAX_SIDE 20000
// Google's largest image is 12288x1536 (about 19 MP); 40 MP leaves room and bounds what a
// hostile upstream's small compressed file can make one conversion allocate (about 160 MB RGBA).
#define NG_MAX_PIXELS 40000000ULL
#define NG_DEFAULT_QUALITY 90
#define NG_WEBP_MAX_SIDE 16383 // WEBP_MAX_DIMENSION: a limit of the format
#define NG_JPEG_MAX_SCANS 500  // progressive scan bombs cost CPU, not memory

typedef struct {
    uint8_t *px;      // rows of w * ch bytes, no padding
    int w, h, ch;     // ch is 3 (RGB) or 4 (RGBA)
    int webp_owned;   // px came from WebPDecodeRGBA and must go back to WebPFree
} raster;

// Writes the reason into errbuf (if any) and returns `code`, so callers can `return fail(...)`.
static int fail(char *eb, size_t el, int code, const char *fmt, ...) {
    if (eb && el) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(eb, el, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int check_limits(long long w, long long h, char *eb, size_t el) {
    if (w <= 0 || h <= 0 || w > NG_MAX_SIDE || h > NG_MAX_SIDE ||
        (unsigned long long)w * (unsigned long long)h > NG_MAX_PIXELS)
        return fail(eb, el, NG_ERR_TOO_LARGE, "image size %lldx%lld is outside the limits", w, h);
    return 0;
}

// ---- libwebp, loaded once --------------------------------------------------

typedef size_t (*webp_enc_fn)(const uint8_t *, int, int, int, float, uint8_t **);
typedef size_t (*webp_enc_ll_fn)(const uint8_t *, int, int, int, uint8_t **);

static struct {
    webp_enc_fn rgb, rgba;
    webp_enc_ll_fn ll_rgb, ll_rgba;
    void (*free_fn)(void *);
    int (*get_info)(const uint8_t *, size_t, int *, int *);
    uint8_t *(*decode_rgba)(const uint8_t *, size_t, int *, int *);
    int can_encode, can_decode;
} webp;
static pthread_once_t webp_once = PTHREAD_ONCE_INIT;

static void webp_load(void) {
    void *h = dlopen("libwebp.so.7", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libwebp.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) return; // never dlclose'd: the table lives as long as the process
    webp.rgb = (webp_enc_fn)dlsym(h, "WebPEncodeRGB");
    webp.rgba = (webp_enc_fn)dlsym(h, "WebPEncodeRGBA");
    webp.ll_rgb = (webp_enc_ll_fn)dlsym(h, "WebPEncodeLosslessRGB");
    webp.ll_rgba = (webp_enc_ll_fn)dlsym(h, "WebPEncodeLosslessRGBA");
    webp.free_fn = (void (*)(void *))dlsym(h, "WebPFree");
    webp.get_info = (int (*)(const uint8_t *, size_t, int *, int *))dlsym(h, "WebPGetInfo");
    webp.decode_rgba =
        (uint8_t * (*)(const uint8_t *, size_t, int *, int *)) dlsym(h, "WebPDecodeRGBA");
    webp.can_encode = webp.rgb && webp.rgba && webp.ll_rgb && webp.ll_rgba && webp.free_fn;
    webp.can_decode = webp.get_info && webp.decode_rgba && webp.free_fn;
}

static void webp_init(void) { pthread_once(&webp_once, webp_load); }

int ng_webp_available(void) {
    webp_init();
    return webp.can_encode;
}

// ---- helpers ---------------------------------------------------------------

void ng_buffer_free(ng_buffer *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->size = 0;
}

static void raster_free(raster *r) {
    if (r->webp_owned) webp.free_fn(r->px);
    else free(r->px);
    r->px = NULL;
}

// RGBA -> RGB in place; the write index never overtakes the read index.
static void drop_alpha(raster *r, int on_white) {
    size_t n = (size_t)r->w * (size_t)r->h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = r->px + 4 * i;
        uint8_t *d = r->px + 3 * i;
        unsigned a = s[3];
        for (int c = 0; c < 3; c++)
            d[c] = on_white ? (uint8_t)((s[c] * a + 255u * (255u - a) + 127u) / 255u) : s[c];
    }
    r->ch = 3;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t le24(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}

ng_format ng_sniff(const uint8_t *b, size_t n) {
    if (!b) return NG_FORMAT_UNKNOWN;
    if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return NG_FORMAT_PNG;
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return NG_FORMAT_JPEG;
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return NG_FORMAT_WEBP;
    return NG_FORMAT_UNKNOWN;
}

// Header-only WebP parse for when libwebp did not load (RIFF + first chunk).
static int webp_parse_header(const uint8_t *b, size_t n, int *w, int *h) {
    if (n < 30) return -1;
    const uint8_t *c = b + 12, *p = b + 20;
    if (memcmp(c, "VP8 ", 4) == 0) { // lossy: frame tag, start code, 14-bit sizes
        if ((p[0] & 1) || p[3] != 0x9d || p[4] != 0x01 || p[5] != 0x2a) return -1;
        *w = (p[6] | p[7] << 8) & 0x3fff;
        *h = (p[8] | p[9] << 8) & 0x3fff;
    } else if (memcmp(c, "VP8L", 4) == 0) { // lossless: 0x2f, then 14+14 bits minus one
        if (p[0] != 0x2f) return -1;
        uint32_t bits = p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 24;
        *w = (int)(bits & 0x3fff) + 1;
        *h = (int)((bits >> 14) & 0x3fff) + 1;
    } else if (memcmp(c, "VP8X", 4) == 0) { // extended: 24-bit canvas sizes minus one
        *w = (int)le24(p + 4) + 1;
        *h = (int)le24(p + 7) + 1;
    } else {
        return -1;
    }
    return (*w > 0 && *h > 0) ? 0 : -1;
}

// ---- JPEG (libjpeg) --------------------------------------------------------
// State that must survive a longjmp lives in the caller's frame (the *_run
// functions only touch it through pointers), so no locals need `volatile`.

typedef struct {
    struct jpeg_error_mgr pub;
    struct jpeg_progress_mgr prog;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jerr_t;

static void jerr_exit(j_common_ptr ci) {
    jerr_t *e = (jerr_t *)ci->err;
    ci->err->format_message(ci, e->msg);
    longjmp(e->jb, 1);
}
static void jerr_silent(j_common_ptr ci) { (void)ci; } // warnings must not hit stderr

static void jerr_init(jerr_t *e) {
    memset(e, 0, sizeof *e);
    jpeg_std_error(&e->pub);
    e->pub.error_exit = jerr_exit;
    e->pub.output_message = jerr_silent;
}

static void jpeg_scan_guard(j_common_ptr ci) {
    if (ci->is_decompressor &&
        ((j_decompress_ptr)ci)->input_scan_number > NG_JPEG_MAX_SCANS) {
        jerr_t *e = (jerr_t *)ci->err;
        snprintf(e->msg, sizeof e->msg, "more than %d progressive scans", NG_JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

// With img == NULL only the header is read (for ng_dimensions).
static int jpeg_decode_run(j_decompress_ptr ci, jerr_t *e, const uint8_t *b, size_t n,
                           raster *img, int *w, int *h, char *eb, size_t el) {
    if (setjmp(e->jb)) return fail(eb, el, NG_ERR_DECODE, "JPEG decode failed: %s", e->msg);
    jpeg_create_decompress(ci); // zeroes everything but ci->err
    e->prog.progress_monitor = jpeg_scan_guard;
    ci->progress = &e->prog;
    jpeg_mem_src(ci, b, (unsigned long)n);
    jpeg_read_header(ci, TRUE);
    *w = (int)ci->image_width;
    *h = (int)ci->image_height;
    if (!img) return 0;
    if (ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK)
        return fail(eb, el, NG_ERR_UNSUPPORTED, "CMYK JPEG is not supported");
    int rc = check_limits(*w, *h, eb, el);
    if (rc) return rc;
    ci->out_color_space = JCS_RGB; // libjpeg-turbo converts YCbCr and grayscale
    jpeg_start_decompress(ci);
    if (ci->output_components != 3)
        return fail(eb, el, NG_ERR_UNSUPPORTED, "unexpected JPEG output layout");
    size_t stride = (size_t)ci->output_width * 3;
    img->px = malloc(stride * ci->output_height);
    if (!img->px) return fail(eb, el, NG_ERR_NO_MEMORY, "out of memory");
    img->w = (int)ci->output_width;
    img->h = (int)ci->output_height;
    img->ch = 3;
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = img->px + stride * ci->output_scanline;
        jpeg_read_scanlines(ci, &row, 1);
    }
    jpeg_finish_decompress(ci);
    return 0;
}

static int jpeg_decode(const uint8_t *b, size_t n, raster *img, int *w, int *h,
                       char *eb, size_t el) {
    struct jpeg_decompress_struct ci;
    jerr_t e;
    if (n > ULONG_MAX) return fail(eb, el, NG_ERR_TOO_LARGE, "JPEG input too large");
    memset(&ci, 0, sizeof ci);
    jerr_init(&e);
    ci.err = &e.pub;
    int rc = jpeg_decode_run(&ci, &e, b, n, img, w, h, eb, el);
    jpeg_destroy_decompress(&ci);
    if (rc && img) raster_free(img);
    return rc;
}

static int jpeg_encode_run(j_compress_ptr ci, jerr_t *e, const raster *img, int quality,
                           unsigned char **buf, unsigned long *len, char *eb, size_t el) {
    if (setjmp(e->jb)) return fail(eb, el, NG_ERR_ENCODE, "JPEG encode failed: %s", e->msg);
    jpeg_create_compress(ci);
    jpeg_mem_dest(ci, buf, len); // grows *buf with malloc/free; freed by the caller
    ci->image_width = (JDIMENSION)img->w;
    ci->image_height = (JDIMENSION)img->h;
    ci->input_components = 3;
    ci->in_color_space = JCS_RGB;
    jpeg_set_defaults(ci);
    jpeg_set_quality(ci, quality, TRUE);
    ci->optimize_coding = TRUE; // a few % smaller for little CPU
    jpeg_start_compress(ci, TRUE);
    size_t stride = (size_t)img->w * 3;
    while (ci->next_scanline < ci->image_height) {
        JSAMPROW row = img->px + stride * ci->next_scanline;
        jpeg_write_scanlines(ci, &row, 1);
    }
    jpeg_finish_compress(ci);
    return 0;
}

static int jpeg_encode(const raster *img, int quality, ng_buffer *out, char *eb, size_t el) {
    struct jpeg_compress_struct ci;
    jerr_t e;
    unsigned char *buf = NULL;
    unsigned long len = 0;
    memset(&ci, 0, sizeof ci);
    jerr_init(&e);
    ci.err = &e.pub;
    int rc = jpeg_encode_run(&ci, &e, img, quality, &buf, &len, eb, el);
    jpeg_destroy_compress(&ci);
    if (rc) {
        free(buf);
        return rc;
    }
    out->data = buf;
    out->size = len;
    return 0;
}

// ---- PNG (libpng simplified API) -------------------------------------------

static int png_decode(const uint8_t *b, size_t n, raster *img, char *eb, size_t el) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&pi, b, n)) {
        fail(eb, el, 0, "PNG decode failed: %s", pi.message);
        png_image_free(&pi);
        return NG_ERR_DECODE;
    }
    int rc = check_limits(pi.width, pi.height, eb, el);
    if (rc) {
        png_image_free(&pi);
        return rc;
    }
    // Untagged 16-bit PNGs are sRGB in practice (browsers agree); libpng would
    // otherwise assume linear light and brighten them when reducing to 8 bits.
    pi.flags |= PNG_IMAGE_FLAG_16BIT_sRGB;
    img->ch = (pi.format & PNG_FORMAT_FLAG_ALPHA) ? 4 : 3;
    pi.format = img->ch == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
    img->w = (int)pi.width;
    img->h = (int)pi.height;
    img->px = malloc(PNG_IMAGE_SIZE(pi));
    if (!img->px) {
        png_image_free(&pi);
        return fail(eb, el, NG_ERR_NO_MEMORY, "out of memory");
    }
    if (!png_image_finish_read(&pi, NULL, img->px, 0, NULL)) {
        fail(eb, el, 0, "PNG decode failed: %s", pi.message);
        png_image_free(&pi);
        raster_free(img);
        return NG_ERR_DECODE;
    }
    png_image_free(&pi); // already freed by a successful finish_read; harmless
    return 0;
}

static int png_encode(const raster *img, ng_buffer *out, char *eb, size_t el) {
    png_image pi;
    memset(&pi, 0, sizeof pi);
    pi.version = PNG_IMAGE_VERSION;
    pi.width = (png_uint_32)img->w;
    pi.height = (png_uint_32)img->h;
    pi.format = img->ch == 4 ? PNG_FORMAT_RGBA : PNG_FORMAT_RGB;
    // One pass into a worst-case buffer: untouched pages cost nothing, then shrink.
    png_alloc_size_t cap = PNG_IMAGE_PNG_SIZE_MAX(pi), len = cap;
    uint8_t *buf = malloc(cap);
    if (!buf) return fail(eb, el, NG_ERR_NO_MEMORY, "out of memory");
    if (!png_image_write_to_memory(&pi, buf, &len, 0, img->px, 0, NULL)) {
        fail(eb, el, 0, "PNG encode failed: %s", pi.message);
        png_image_free(&pi);
        free(buf);
        return NG_ERR_ENCODE;
    }
    png_image_free(&pi);
    uint8_t *shrunk = realloc(buf, len);
    out->data = shrunk ? shrunk : buf;
    out->size = len;
    return 0;
}

// ---- WebP (dlopen'ed libwebp) ----------------------------------------------

static int webp_decode(const uint8_t *b, size_t n, raster *img, char *eb, size_t el) {
    if (!webp.can_decode)
        return fail(eb, el, NG_ERR_WEBP_UNAVAILABLE, "WebP decoding unavailable (no libwebp.so.7)");
    int w = 0, h = 0;
    if (!webp.get_info(b, n, &w, &h))
        return fail(eb, el, NG_ERR_DECODE, "WebP decode failed: invalid header");
    int rc = check_limits(w, h, eb, el);
    if (rc) return rc;
    img->px = webp.decode_rgba(b, n, &img->w, &img->h);
    if (!img->px)
        return fail(eb, el, NG_ERR_DECODE, "WebP decode failed (corrupt, truncated or animated)");
    img->webp_owned = 1;
    img->ch = 4;
    // WebPDecodeRGBA always yields RGBA; keep alpha only if the image uses it.
    size_t np = (size_t)img->w * (size_t)img->h;
    size_t i = 0;
    while (i < np && img->px[4 * i + 3] == 255) i++;
    if (i == np) drop_alpha(img, 0);
    return 0;
}

static int webp_encode(const raster *img, int quality, ng_buffer *out, char *eb, size_t el) {
    if (!webp.can_encode)
        return fail(eb, el, NG_ERR_WEBP_UNAVAILABLE, "WebP encoding unavailable (no libwebp.so.7)");
    if (img->w > NG_WEBP_MAX_SIDE || img->h > NG_WEBP_MAX_SIDE)
        return fail(eb, el, NG_ERR_TOO_LARGE, "WebP cannot encode %dx%d (max side %d)", img->w,
                    img->h, NG_WEBP_MAX_SIDE);
    int stride = img->w * img->ch;
    uint8_t *enc = NULL;
    size_t len;
    if (quality == 100)
        len = (img->ch == 4 ? webp.ll_rgba : webp.ll_rgb)(img->px, img->w, img->h, stride, &enc);
    else
        len = (img->ch == 4 ? webp.rgba : webp.rgb)(img->px, img->w, img->h, stride,
                                                    (float)quality, &enc);
    if (len == 0 || !enc) {
        if (enc) webp.free_fn(enc);
        return fail(eb, el, NG_ERR_ENCODE, "WebP encode failed");
    }
    // Copy so that ng_buffer_free never has to know which allocator made the bytes.
    out->data = malloc(len);
    if (out->data) memcpy(out->data, enc, len);
    webp.free_fn(enc);
    if (!out->data) return fail(eb, el, NG_ERR_NO_MEMORY, "out of memory");
    out->size = len;
    return 0;
}

// ---- public entry points ---------------------------------------------------

int ng_dimensions(const uint8_t *b, size_t n, int *width, int *height) {
    if (!b || !width || !height) return NG_ERR_INVALID_ARGUMENT;
    int w = 0, h = 0, rc;
    switch (ng_sniff(b, n)) {
    case NG_FORMAT_PNG: // signature, IHDR length, "IHDR", width, height
        if (n < 24 || memcmp(b + 12, "IHDR", 4) != 0) return NG_ERR_DECODE;
        if (be32(b + 16) > INT_MAX || be32(b + 20) > INT_MAX) return NG_ERR_DECODE;
        w = (int)be32(b + 16);
        h = (int)be32(b + 20);
        break;
    case NG_FORMAT_JPEG:
        rc = jpeg_decode(b, n, NULL, &w, &h, NULL, 0);
        if (rc) return rc;
        break;
    case NG_FORMAT_WEBP:
        webp_init();
        if (webp.can_decode ? !webp.get_info(b, n, &w, &h) : webp_parse_header(b, n, &w, &h))
            return NG_ERR_DECODE;
        break;
    default:
        return NG_ERR_UNSUPPORTED;
    }
    if (w <= 0 || h <= 0) return NG_ERR_DECODE;
    *width = w;
    *height = h;
    return 0;
}

int ng_convert(const uint8_t *b, size_t n, ng_format target, int quality, ng_buffer *out,
               char *eb, size_t el) {
    if (eb && el) eb[0] = '\0';
    if (!out) return fail(eb, el, NG_ERR_INVALID_ARGUMENT, "output buffer is NULL");
    out->data = NULL;
    out->size = 0;
    if (!b || n == 0) return fail(eb, el, NG_ERR_INVALID_ARGUMENT, "input is empty");
    if (target != NG_FORMAT_PNG && target != NG_FORMAT_JPEG && target != NG_FORMAT_WEBP)
        return fail(eb, el, NG_ERR_INVALID_ARGUMENT, "unknown target format %d", (int)target);
    if (quality == -1) quality = NG_DEFAULT_QUALITY;
    if (quality < 0 || quality > 100)
        return fail(eb, el, NG_ERR_INVALID_ARGUMENT, "quality %d is not -1 or 0..100", quality);
    webp_init();

    raster img = {0};
    int rc, w, h;
    switch (ng_sniff(b, n)) {
    case NG_FORMAT_PNG: rc = png_decode(b, n, &img, eb, el); break;
    case NG_FORMAT_JPEG: rc = jpeg_decode(b, n, &img, &w, &h, eb, el); break;
    case NG_FORMAT_WEBP: rc = webp_decode(b, n, &img, eb, el); break;
    default:
        return fail(eb, el, NG_ERR_UNSUPPORTED, "input is not PNG, JPEG or WebP");
    }
    if (rc) return rc;

    switch (target) {
    case NG_FORMAT_JPEG:
        if (img.ch == 4) drop_alpha(&img, 1);
        rc = jpeg_encode(&img, quality, out, eb, el);
        break;
    case NG_FORMAT_WEBP: rc = webp_encode(&img, quality, out, eb, el); break;
    default: rc = png_encode(&img, out, eb, el); break;
    }
    raster_free(&img);
    return rc;
}
