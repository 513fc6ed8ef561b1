/* tests/gpu/engine-main.c: `qd-engine run|bench|synth ...`, the engine commands of quantd
 * without the daemon (no protobuf-c, liburing or libsystemd), for GPU machines that lack
 * those libraries.  Same options as `quantd COMMAND`. */
#include <stdio.h>
#include <string.h>

#include "daemon/cli/commands.h"

/* cmd_synth is optional: the build links it when daemon/cli/cmd_synth.c exists. */
int cmd_synth(int argc, char **argv) __attribute__((weak));

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "run"))
		return cmd_run(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "bench"))
		return cmd_bench(argc - 1, argv + 1);
	if (argc >= 2 && !strcmp(argv[1], "synth") && cmd_synth)
		return cmd_synth(argc - 1, argv + 1);
	fprintf(stderr, "usage: qd-engine run|bench%s ARGS (the options of `quantd COMMAND`)\n",
		cmd_synth ? "|synth" : "");
	return 2;
}
