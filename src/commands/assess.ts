// nitro-acm assess: the running agent's security assessment (src/agent/assess.ts),
// as text, as the Markdown report an operator files, or as JSON.
import { controlCall } from '../agent/control.ts';
import type { Assessment, Binding } from '../agent/assess.ts';

export { assessExitCode } from '../agent/assess.ts';

export function readAssessment(socket: string): Promise<Assessment> {
  // Every token's key is probed with KMS: many tokens take a while.
  return controlCall(socket, 'assess', {}, 300_000);
}

const boundWord: Record<Binding, string> = { yes: 'Yes', 'other value': 'NO: another value', no: 'No', unknown: 'unknown' };

function pcrRows(a: Assessment): string[][] {
  return a.pcrs.map((p) => [`PCR${p.index} (${p.name})`, p.value ? `${p.value.slice(0, 16)}...` : '(none)', a.keys.length ? a.keys.map((k) => `${a.keys.length > 1 ? `${k.key}: ` : ''}${boundWord[p.bound[k.key] ?? 'unknown']}`).join(', ') : 'no key']);
}

function findingLines(a: Assessment, bullet: string): string[] {
  return a.findings.flatMap((f) => [`${bullet}[${f.level}] ${f.text}`, ...(f.fix ? [`${bullet.replace(/\S/g, ' ')}  fix: ${f.fix}`] : [])]);
}

function summary(a: Assessment): string {
  const n = (l: string) => a.findings.filter((f) => f.level === l).length;
  return `${n('PASS')} PASS, ${n('WARN')} WARN, ${n('FAIL')} FAIL`;
}

export function formatAssessment(a: Assessment): string {
  const lines = [
    `nitro-acm security assessment, ${a.generatedAt}${a.localMode ? ' (LOCAL MODE)' : ''}`,
    `enclave image   ${a.image.path}${a.image.builtAt ? ` (built ${a.image.builtAt}, ${a.image.sizeMiB} MiB)` : ''}`,
    `measurements    ${a.image.measurements}`,
    `instance        ${a.instance.id ?? '?'} in ${a.instance.region ?? '?'}, role ${a.instance.roleArn ?? '?'}`,
    `resources       ${a.resources.cpuCount} vCPUs, ${a.resources.memoryMib} MiB`,
    '', 'PCR measurements (bound in the KMS key policy of each token\'s key):',
    ...pcrRows(a).map((r) => `  ${r[0].padEnd(28)} ${r[1].padEnd(20)} ${r[2]}`),
    '', 'KMS keys:',
    ...a.keys.flatMap((k) => [`  ${k.key} (${k.source})`, `    key              ${k.keyArn ?? 'unknown'}`, `    direct decrypt   ${k.directDecrypt}${k.directDecryptDetail ? `: ${k.directDecryptDetail}` : ''}`, `    policy           ${k.policy}`, ...k.conditions.map((c, i) => `    ${i ? '                 ' : 'conditions       '}${c}`)]),
    ...(a.keys.length ? [] : ['  (no token)']),
    '', 'Findings:', ...findingLines(a, ''), '', summary(a),
  ];
  return lines.join('\n') + '\n';
}

/** The report as Markdown, in the shape of the Nitro Enclave Security Assessment. */
export function formatAssessmentMarkdown(a: Assessment): string {
  const esc = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    '## Nitro Enclave Security Assessment', '',
    `**Generated**: ${a.generatedAt} by nitro-acm assess${a.localMode ? ' (local mode)' : ''}  `,
    `**Enclave Image**: ${a.image.path}  `,
    ...(a.image.builtAt ? [`**Build Date**: ${a.image.builtAt}  `] : []),
    `**Measurements**: ${a.image.measurements}  `,
    `**Instance**: ${a.instance.id ?? '?'} (${a.instance.region ?? '?'})  `,
    `**Allocated Resources**: ${a.resources.cpuCount} vCPUs, ${a.resources.memoryMib} MiB memory`, '',
    '### PCR Measurements', '', '| PCR | Value | Bound in KMS Policy |', '|-----|-------|---------------------|',
    ...pcrRows(a).map((r) => `| ${r.map(esc).join(' | ')} |`), '',
    '### KMS Key Policy Verification', '',
    ...a.keys.flatMap((k) => [`- **${k.key}** (${esc(k.source)})`, `  - Key ARN: ${k.keyArn ?? 'unknown'}`, ...k.conditions.map((c) => `  - Attestation condition: ${c}`), `  - Key policy: ${k.policy}`, `  - Parent role: ${a.instance.roleArn ?? '?'}`, `  - Direct decrypt from parent: ${k.directDecrypt}${k.directDecrypt === 'BLOCKED' ? ' (attestation required)' : k.directDecryptDetail ? ` (${k.directDecryptDetail})` : ''}`]),
    '', '### Security Posture', '', ...findingLines(a, '- '), '', `**${summary(a)}**`,
  ];
  return lines.join('\n') + '\n';
}
