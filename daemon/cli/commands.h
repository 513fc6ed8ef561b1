/* daemon/cli/commands.h: the `quantd` subcommands.  Each takes the arguments after its
 * name (argv[0] is the subcommand) and returns the process exit status; only these and
 * main() print to the terminal or exit. */
#ifndef QD_CLI_COMMANDS_H
#define QD_CLI_COMMANDS_H

int cmd_run(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv); /* random-weight models of real shapes */
int cmd_quantize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_serve(int argc, char **argv); /* daemon/serve.c */

#endif
