/* daemon/engine/eval_plot.c: a dependency-free SVG scatter plot of quality (KLD against
 * the base, log scale) versus size (bits per weight), one labelled point per model. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "eval.h"

#define W 720
#define H 460
#define ML 80 /* margins: left, right, top, bottom */
#define MR 30
#define MT 50
#define MB 60

static const char *method_color(const char *m)
{
	if (!strcmp(m, "gptq"))
		return "#d62728";
	if (!strcmp(m, "awq"))
		return "#2ca02c";
	if (!strcmp(m, "rtn"))
		return "#1f77b4";
	return "#555555";
}

/* Writes S with &, < and > escaped. */
static void put_text(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '&')
			fputs("&amp;", f);
		else if (*s == '<')
			fputs("&lt;", f);
		else if (*s == '>')
			fputs("&gt;", f);
		else
			fputc(*s, f);
	}
}

int eval_plot_svg(const EvalResult *r, int n, const char *title, const char *path)
{
	double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
	int shown = 0;
	for (int i = 0; i < n; i++) {
		if (!(isfinite(r[i].kld) && r[i].kld > 0))
			continue;
		double y = log10(r[i].kld);
		x0 = fmin(x0, r[i].bpw);
		x1 = fmax(x1, r[i].bpw);
		y0 = fmin(y0, y);
		y1 = fmax(y1, y);
		shown++;
	}
	if (!shown)
		return -EINVAL;
	x0 = floor(x0 - 0.5);
	x1 = ceil(x1 + 0.5);
	y0 = floor(y0);
	y1 = ceil(y1);
	if (y1 <= y0)
		y1 = y0 + 1;
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	const double pw = W - ML - MR, ph = H - MT - MB;
#define PX(x) (ML + ((x) - x0) / (x1 - x0) * pw)
#define PY(y) (MT + (y1 - (y)) / (y1 - y0) * ph)
	fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
		   "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
		W, H, W, H);
	fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"15\" text-anchor=\"middle\">", W / 2);
	put_text(f, title ? title : "Quality vs size");
	fputs("</text>\n", f);
	/* grid: one line per bit and per decade */
	for (double x = x0; x <= x1 + 1e-9; x += 1)
		fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>"
			   "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n",
			PX(x), MT, PX(x), H - MB, PX(x), H - MB + 18, x);
	for (double y = y0; y <= y1 + 1e-9; y += 1)
		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>"
			   "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
			ML, PY(y), W - MR, PY(y), ML - 8, PY(y) + 4, pow(10, y));
	fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#333\"/>\n", ML, MT, pw, ph);
	fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">bits per weight</text>\n", ML + pw / 2, H - 15);
	fprintf(f, "<text transform=\"translate(20 %.1f) rotate(-90)\" text-anchor=\"middle\">"
		   "mean KL-divergence vs base (nats, log scale)</text>\n", MT + ph / 2);
	for (int i = 0; i < n; i++) {
		if (!(isfinite(r[i].kld) && r[i].kld > 0))
			continue;
		double px = PX(r[i].bpw), py = PY(log10(r[i].kld));
		fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"><title>", px, py, method_color(r[i].method));
		put_text(f, r[i].type);
		fprintf(f, " %s: %.3f bpw, KLD %.5f, PPL %.3f</title></circle>\n", r[i].method, r[i].bpw, r[i].kld, r[i].ppl);
		fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">", px + 7, py - 6);
		put_text(f, r[i].type);
		fputc(' ', f);
		put_text(f, r[i].method);
		fputs("</text>\n", f);
	}
	/* legend */
	const char *ms[] = { "rtn", "gptq", "awq" };
	for (int k = 0; k < 3; k++)
		fprintf(f, "<circle cx=\"%d\" cy=\"%d\" r=\"5\" fill=\"%s\"/><text x=\"%d\" y=\"%d\">%s</text>\n",
			W - MR - 70, MT + 16 + 18 * k, method_color(ms[k]), W - MR - 60, MT + 20 + 18 * k, ms[k]);
	fputs("</svg>\n", f);
#undef PX
#undef PY
	int r_close = ferror(f) ? -EIO : 0;
	if (fclose(f) != 0 && !r_close)
		r_close = -errno;
	return r_close;
}
