// kbuild's `modules.order`: read by the tree import and by the boot's initramfs (which must
// not load the whole import to place the modules).
import * as fs from "node:fs";
import * as path from "node:path";

/** The objects of the kernel modules kbuild listed in `modules.order`, in its order. */
export function modulesOrder(buildDir: string): string[] {
  let order: string;
  try {
    order = fs.readFileSync(path.join(buildDir, "modules.order"), "utf8");
  } catch {
    return [];
  }
  return order.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => l.replace(/\.ko$/, ".o"));
}
