// The nitro-acm module loaded through pkcs11js, as the PKCS#11-level tests use it.
import pkcs11js from 'pkcs11js';
import { MODULE_PATH } from './enclave.ts';

export function loadModule(): pkcs11js.PKCS11 {
  const p11 = new pkcs11js.PKCS11();
  p11.load(MODULE_PATH);
  p11.C_Initialize();
  return p11;
}

export function unloadModule(p11: pkcs11js.PKCS11 | undefined): void {
  try { p11?.C_Finalize(); } catch { /* already */ }
}

/** The slot whose token has this label. */
export function slotFor(p11: pkcs11js.PKCS11, label: string): Buffer {
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === label);
  if (!slot) throw new Error(`no slot ${label}`);
  return slot;
}
