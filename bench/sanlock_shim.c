/*
 * LD_PRELOAD shim for running the sanlock daemon as a side-by-side peer in the lease benchmark
 * (bench/sanlock_peer.py compiles it into a temporary directory; no binary is committed).
 *
 * The daemon exits at start on this machine because it cannot raise RLIMIT_MEMLOCK (hard
 * limit 8 MiB) and then RLIMIT_RTPRIO. With -l 0 (no mlockall) and -h 0 (no realtime
 * scheduling) it needs neither, so setrlimit/setrlimit64 report success for those two
 * resources and pass every other call through to the C library.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);
typedef int (*setrlimit64_fn)(__rlimit_resource_t, const struct rlimit64 *);

static int ignored(__rlimit_resource_t resource)
{
	return resource == RLIMIT_MEMLOCK || resource == RLIMIT_RTPRIO;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *limit)
{
	static setrlimit_fn real;

	if (ignored(resource))
		return 0;
	if (!real)
		real = (setrlimit_fn)dlsym(RTLD_NEXT, "setrlimit");
	return real(resource, limit);
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *limit)
{
	static setrlimit64_fn real;

	if (ignored(resource))
		return 0;
	if (!real)
		real = (setrlimit64_fn)dlsym(RTLD_NEXT, "setrlimit64");
	return real(resource, limit);
}
