/* pvcmdline.h - numeric options from start_info's command line ("key=value key=value").
 * Used by the PV guests that take parameters (pvticks, pvspin, pvballoon, pvhostile).
 */
#ifndef PYVMM_PVCMDLINE_H
#define PYVMM_PVCMDLINE_H
#include "pvlib.h"

/* The decimal value of `key=` in the command line, or `def` if absent or not a number. */
static inline unsigned long cmdline_uint(const char *key, unsigned long def)
{
    const char *p = (const char *)si->cmd_line;
    size_t klen = slen(key);
    while (*p) {
        while (*p == ' ')
            p++;
        size_t i = 0;
        while (i < klen && p[i] == key[i])
            i++;
        if (i == klen && p[i] == '=' && p[i + 1] >= '0' && p[i + 1] <= '9') {
            unsigned long v = 0;
            for (p += i + 1; *p >= '0' && *p <= '9'; p++)
                v = v * 10 + (unsigned long)(*p - '0');
            return v;
        }
        while (*p && *p != ' ')
            p++;
    }
    return def;
}
#endif
