/* A stand-in for libcuda.so.1 with just the calls phxfs's Python binding
 * makes to wait for a producer's stream; each call is logged to
 * $CUSTUB_LOG so that test_cuda_sync.py can check what was called, in
 * which order, with which arguments. Never a real driver. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void logf_(const char *fmt, unsigned long a)
{
	FILE *f = fopen(getenv("CUSTUB_LOG"), "a");
	if (!f)
		return;
	fprintf(f, fmt, a);
	fputc('\n', f);
	fclose(f);
}

int cuStreamSynchronize(void *s)
{
	logf_("sync %lu", (unsigned long)(uintptr_t)s);
	return getenv("CUSTUB_FAIL") ? 700 : 0;
}

int cuCtxGetCurrent(void **c)
{
	*c = getenv("CUSTUB_CTX") ? (void *)0x1000 : NULL;
	return 0;
}

int cuDeviceGet(int *d, int ordinal)
{
	*d = ordinal;
	return 0;
}

int cuDevicePrimaryCtxRetain(void **c, int d)
{
	logf_("retain %lu", (unsigned long)d);
	*c = (void *)0x2000;
	return 0;
}

int cuDevicePrimaryCtxRelease_v2(int d)
{
	logf_("release %lu", (unsigned long)d);
	return 0;
}

int cuCtxPushCurrent_v2(void *c)
{
	logf_("push %lu", (unsigned long)(uintptr_t)c);
	return 0;
}

int cuCtxPopCurrent_v2(void **c)
{
	logf_("pop %lu", 0);
	*c = (void *)0x2000;
	return 0;
}

int cuPointerGetAttribute(void *out, int attr, uintptr_t ptr)
{
	logf_("ordinal-of %lu", (unsigned long)ptr);
	*(int *)out = 3;
	return attr == 9 ? 0 : 1;
}
