/* Hardware-abstraction shim: everything the protocol core needs from the board.
 *
 * The core (gc_core.c) never touches registers, files or clocks itself: time comes in as
 * an argument (milliseconds from any monotonic source) and effects go out through this
 * table of functions. An MCU build fills it with UART/GPIO/reset code; the host build
 * (host/host_main.c) fills it with a pseudo-terminal and stderr logging; the unit tests
 * fill it with recorders. Inputs (passage sensors, fire alarm, tamper switch) are pushed
 * into the core by the board's main loop or interrupt handlers via gc_core_* calls. */
#ifndef GC_HAL_H
#define GC_HAL_H

#include <stddef.h>
#include <stdint.h>

typedef enum gc_barrier {
    GC_BARRIER_CLOSED = 0, /* locked both ways */
    GC_BARRIER_OPEN_IN = 1,
    GC_BARRIER_OPEN_OUT = 2,
    GC_BARRIER_OPEN_BOTH = 3 /* emergency: free passage both ways */
} gc_barrier_t;

typedef struct gc_hal {
    void *ctx;
    /* Queue bytes for transmission on the UART / RS-485 line (must not block long). */
    void (*uart_write)(void *ctx, const uint8_t *data, size_t len);
    /* Drive the barrier motor/lock to a state. */
    void (*set_barrier)(void *ctx, gc_barrier_t state);
    /* Reset the MCU (does not return on hardware; the host build re-executes itself). */
    void (*reboot)(void *ctx);
    /* Optional diagnostic log line (may be NULL). */
    void (*log)(void *ctx, const char *msg);
} gc_hal_t;

#endif
