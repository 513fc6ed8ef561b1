/* kernels/types.c: the type table. */
#include "types.h"

#include <errno.h>
#include <strings.h>

static const QdTypeTraits traits[QD_TYPE_COUNT] = {
	[QD_TYPE_F32] = { "F32", 1, 4, false, true },
	[QD_TYPE_F16] = { "F16", 1, 2, false, true },
	[QD_TYPE_Q4_0] = { "Q4_0", QD_QK, sizeof(BlockQ4_0), true, true },
	[QD_TYPE_Q4_1] = { "Q4_1", QD_QK, sizeof(BlockQ4_1), true, true },
	[QD_TYPE_Q5_0] = { "Q5_0", QD_QK, 22, true, false },
	[QD_TYPE_Q5_1] = { "Q5_1", QD_QK, 24, true, false },
	[QD_TYPE_Q8_0] = { "Q8_0", QD_QK, sizeof(BlockQ8_0), true, true },
	[QD_TYPE_Q8_1] = { "Q8_1", QD_QK, sizeof(BlockQ8_1), true, false },
	[QD_TYPE_Q2_K] = { "Q2_K", QD_QK_K, 84, true, false },
	[QD_TYPE_Q3_K] = { "Q3_K", QD_QK_K, 110, true, false },
	[QD_TYPE_Q4_K] = { "Q4_K", QD_QK_K, sizeof(BlockQ4_K), true, true },
	[QD_TYPE_Q5_K] = { "Q5_K", QD_QK_K, 176, true, false },
	[QD_TYPE_Q6_K] = { "Q6_K", QD_QK_K, sizeof(BlockQ6_K), true, true },
	[QD_TYPE_Q8_K] = { "Q8_K", QD_QK_K, sizeof(BlockQ8_K), true, false },
	[QD_TYPE_BF16] = { "BF16", 1, 2, false, true },
};

_Static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 layout");
_Static_assert(sizeof(BlockQ8_1) == 36, "Q8_1 layout");
_Static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 layout");
_Static_assert(sizeof(BlockQ4_1) == 20, "Q4_1 layout");
_Static_assert(sizeof(BlockQ4_K) == 144, "Q4_K layout");
_Static_assert(sizeof(BlockQ6_K) == 210, "Q6_K layout");
_Static_assert(sizeof(BlockQ8_K) == 292, "Q8_K layout");

const QdTypeTraits *qd_type_traits(int t)
{
	if (t < 0 || t >= QD_TYPE_COUNT || !traits[t].name)
		return NULL;
	return &traits[t];
}

int qd_type_from_name(const char *name)
{
	for (int t = 0; t < QD_TYPE_COUNT; t++)
		if (traits[t].name && strcasecmp(traits[t].name, name) == 0)
			return t;
	return -EINVAL;
}

int qd_row_size(int t, uint64_t n, uint64_t *ret)
{
	const QdTypeTraits *tr = qd_type_traits(t);
	if (!tr || n % (uint64_t)tr->blck)
		return -EINVAL;
	uint64_t blocks = n / (uint64_t)tr->blck, bytes;
	if (__builtin_mul_overflow(blocks, (uint64_t)tr->size, &bytes))
		return -EOVERFLOW;
	*ret = bytes;
	return 0;
}
