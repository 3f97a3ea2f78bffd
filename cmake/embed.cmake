# cmake -DIN=file -DOUT=file.cpp -DNAME=symbol -P embed.cmake: the bytes of IN
# as a C++ array NAME and its size NAME_size.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" len)
math(EXPR size "${len} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "// Generated from ${IN} by cmake/embed.cmake.\n#include <cstddef>\n"
     "alignas(64) extern const unsigned char ${NAME}[] = {${bytes}};\n"
     "extern const size_t ${NAME}_size = ${size};\n")
