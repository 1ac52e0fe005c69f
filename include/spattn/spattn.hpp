#pragma once
// spattn: CPU attention kernels for long-context LLM inference. Umbrella header.
#include "spattn/core/dtype.hpp"
#include "spattn/core/error.hpp"
#include "spattn/core/executor.hpp"
#include "spattn/core/tensor_view.hpp"
#include "spattn/core/varlen.hpp"
#include "spattn/core/any_view.hpp"
#include "spattn/budget/budget.hpp"
#include "spattn/kernels/decode.hpp"
#include "spattn/kernels/merge.hpp"
#include "spattn/kernels/options.hpp"
#include "spattn/kernels/prefill.hpp"
#include "spattn/version.hpp"
