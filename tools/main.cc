#include <cstdio>
int main() { std::puts("merlin"); return 0; }
