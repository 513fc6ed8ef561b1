/* tests/daemon/serve-main.c: `quantd serve` as its own binary, so the end-to-end tests
 * do not depend on daemon/cli/main.c.  Arguments are those of `quantd serve`. */
int cmd_serve(int argc, char **argv);

int main(int argc, char **argv)
{
	return cmd_serve(argc, argv);
}
