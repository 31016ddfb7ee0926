// Run by Store.open in a child process: reads every record of a store that was not closed
// cleanly. Exits 0 if all is well; 1 with the reason on stdout; a signal if LMDB crashed.
import { Store } from "./store";

try {
  Store.checkAll(process.argv[2]);
  process.exit(0);
} catch (e) {
  process.stdout.write(`${(e as Error).message}\n`);
  process.exit(1);
}
