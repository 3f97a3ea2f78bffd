// SPDX-License-Identifier: GPL-2.0
/* The stand-in of ../nvstub, licensed as NVIDIA's proprietary module is. */
#include "nvstub.c"
