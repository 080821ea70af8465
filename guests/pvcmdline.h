/* pvcmdline.h - options from start_info's command line ("key=value key=value"): a value's
 * text, or a decimal number. Used by the PV guests that take parameters (pvticks, pvspin,
 * pvballoon, pvhostile, netfront).
 */
#ifndef PYVMM_PVCMDLINE_H
#define PYVMM_PVCMDLINE_H
#include "pvlib.h"

/* The text after `key=` in the command line (up to the next space or the end), or NULL. */
static inline const char *cmdline_value(const char *key)
{
    const char *p = (const char *)si->cmd_line;
    size_t klen = slen(key);
    while (*p) {
        while (*p == ' ')
            p++;
        size_t i = 0;
        while (i < klen && p[i] == key[i])
            i++;
        if (i == klen && p[i] == '=')
            return p + i + 1;
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

/* The decimal value of `key=` in the command line, or `def` if absent or not a number. */
static inline unsigned long cmdline_uint(const char *key, unsigned long def)
{
    const char *p = cmdline_value(key);
    if (!p || *p < '0' || *p > '9')
        return def;
    unsigned long v = 0;
    for (; *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (unsigned long)(*p - '0');
    return v;
}
#endif
