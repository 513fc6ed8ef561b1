/* daemon/engine/convert.h: importers from other checkpoint formats into GGUF. */
#ifndef QD_ENGINE_CONVERT_H
#define QD_ENGINE_CONVERT_H

#include <stddef.h>

/* Converts a karpathy/llama2.c checkpoint (7 x i32 header, then fp32 weights; a negative
 * vocab_size means the output head is stored, not shared with the embedding) into a
 * llama-architecture GGUF at OUT_PATH.
 *
 * TOKENIZER_PATH (may be NULL) is llama2.c's tokenizer.bin; its tokens become a
 * SentencePiece ("llama") vocabulary.  Because llama2.c stores U+2581 as a plain space,
 * every ' ' in a token is written back as U+2581, and its "\n<s>\n" / "\n</s>\n" texts for
 * ids 1 and 2 become "<s>" / "</s>".
 *
 * OUT_TYPE (QD_TYPE_F32 or QD_TYPE_F16) is used for 2-D weights; norms stay F32.  Names and
 * shapes follow GGUF (blk.N.attn_q.weight, ne innermost first).  llama2.c already rotates
 * adjacent pairs in RoPE, the GGUF convention, so q/k are copied unpermuted.  Weights are
 * streamed a chunk at a time; the output appears only when complete (PATH.tmp, rename).
 *
 * Returns 0, or -errno with "FILE: reason" in err naming the file at fault: -EBADMSG for a
 * malformed checkpoint or tokenizer (bad header values, a size that is not exactly what the
 * header implies), -ERANGE for a weight that does not fit in F16, -EINVAL for a bad
 * OUT_TYPE, else the system's error. */
int convert_llama2c(const char *ckpt_path, const char *tokenizer_path, const char *out_path,
		    int out_type, char *err, size_t errlen);

#endif
