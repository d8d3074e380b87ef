// The one translation unit of the test programs that compiles sllm's implementation.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
