/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0x0000).
 * Check value: crc("123456789") == 0x29B1. Freestanding: no libc needed. */
#ifndef GC_CRC_H
#define GC_CRC_H

#include <stddef.h>
#include <stdint.h>

#define GC_CRC_INIT 0xFFFFu

uint16_t gc_crc16_update(uint16_t crc, const uint8_t *data, size_t len);
uint16_t gc_crc16(const uint8_t *data, size_t len);

#endif
