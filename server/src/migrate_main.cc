// sigmad-migrate: copies a history store into another (store_migrate.h).
#include "sigma/server/store_migrate.h"

int main(int argc, char** argv) { return sigma::server::MigrateMain(argc, argv); }
