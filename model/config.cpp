#include "model/config.h"
namespace mlaforge {}
