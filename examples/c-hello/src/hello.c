#include "greeting.h"
int puts(const char *s);
int main(void) { puts(GREETING); return 0; }
