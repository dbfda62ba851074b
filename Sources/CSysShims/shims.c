// Headers only: see include/CSysShims.h.
